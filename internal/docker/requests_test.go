package docker

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCreateNetworkRequest(t *testing.T) {
	body := func(opts string) []byte {
		return []byte(`{"NetworkID":"abc123","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{` + opts + `}},` +
			`"IPv4Data":[{"AddressSpace":"vxnet","Gateway":"172.18.0.1/16","Pool":"172.18.0.0/16"}],"IPv6Data":[]}`)
	}
	for _, tc := range []struct {
		opts string
		want string
		vni  uint32
		mtu  int
		enc  bool
	}{
		{``, "", 0, 0, false},
		{`"encrypted":""`, "", 0, 0, true}, // docker network create -o encrypted, as for Docker's overlay
		{`"vxnet.encrypted":"true"`, "", 0, 0, true},
		{`"vxnet.encrypted":"false"`, "", 0, 0, false},
		{`"vxnet.encrypted":"yes please"`, `invalid -o vxnet.encrypted="yes please": want true or false`, 0, 0, false},
		{`"vxnet.vni":"4242","com.docker.network.driver.mtu":"1400","vxnet.flood":"true"`, "", 4242, 1400, false},
		{`"vxnet.vni":"0"`, "invalid -o vxnet.vni: invalid VNI 0", 0, 0, false},
		{`"vxnet.vni":"banana"`, `invalid -o vxnet.vni="banana"`, 0, 0, false},
		{`"com.docker.network.driver.mtu":"-3"`, `invalid -o com.docker.network.driver.mtu="-3"`, 0, 0, false},
		{`"vxnet.flood":"maybe"`, `invalid -o vxnet.flood="maybe"`, 0, 0, false},
		{`"vxnet.colour":"blue"`, "unknown option -o vxnet.colour", 0, 0, false},
	} {
		var req CreateNetworkRequest
		if err := Decode(body(tc.opts), &req); err != nil {
			t.Fatal(err)
		}
		n, err := req.Network()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.opts, err, tc.want)
			continue
		}
		if err == nil && (n.VNI != tc.vni || n.MTU != tc.mtu || n.Encrypted != tc.enc || n.Subnet != "172.18.0.0/16" || n.Gateway != "172.18.0.1/16") {
			t.Errorf("%s: network = %+v", tc.opts, n)
		}
	}
	var req CreateNetworkRequest
	_ = Decode([]byte(`{"NetworkID":"x","IPv4Data":[]}`), &req)
	if _, err := req.Network(); err == nil || !strings.Contains(err.Error(), "give --subnet") {
		t.Errorf("no pool: err = %v", err)
	}
	req = CreateNetworkRequest{}
	_ = Decode([]byte(`{"NetworkID":"x","IPv4Data":[{"Pool":"10.0.0.0/24"},{"Pool":"10.1.0.0/24"}]}`), &req)
	if n, err := req.Network(); err == nil || !strings.Contains(err.Error(), "got 2 (10.0.0.0/24, 10.1.0.0/24)") {
		t.Errorf("two pools: %+v, err = %v (the second must not be dropped)", n, err)
	}
	req = CreateNetworkRequest{}
	_ = Decode([]byte(`{"NetworkID":"x","IPv4Data":[{"Pool":"10.0.0.0/24"}],"IPv6Data":[{"Pool":"fd00::/64","Gateway":"fd00::1/64"}]}`), &req)
	if n, err := req.Network(); err != nil || n.Subnet6 != "fd00::/64" || n.Gateway6 != "fd00::1/64" {
		t.Errorf("ipv6: %+v, err = %v", n, err)
	}
	req = CreateNetworkRequest{}
	_ = Decode([]byte(`{"NetworkID":"x","IPv4Data":[{"Pool":"10.0.0.0/24"}],"IPv6Data":[{"Pool":"fd00::/64"},{"Pool":"fd01::/64"}]}`), &req)
	if _, err := req.Network(); err == nil || !strings.Contains(err.Error(), "at most one IPv6 subnet, got 2 (fd00::/64, fd01::/64)") {
		t.Errorf("two IPv6 pools: err = %v", err)
	}
	if err := Decode([]byte(`{"NetworkID":`), &req); err == nil || !strings.Contains(err.Error(), "malformed plugin request") {
		t.Errorf("truncated: err = %v", err)
	}
}

func FuzzDecodeRequests(f *testing.F) {
	f.Add([]byte(`{"NetworkID":"abc","Options":{"com.docker.network.generic":{"vxnet.vni":"7"}},"IPv4Data":[{"Pool":"10.0.0.0/24","Gateway":"10.0.0.1/24"}]}`))
	f.Add([]byte(`{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.0.0.5/24","MacAddress":""}}`))
	f.Add([]byte(`{"PoolID":"10.0.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}`))
	f.Add([]byte(`{"NetworkID":"n","EndpointID":"e","Options":{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}`))
	f.Add([]byte(`{"NetworkID":"n","IPv4Data":[{"Pool":"10.1.0.0/24"}],"Options":{"com.docker.network.internal":true}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var cn CreateNetworkRequest
		if Decode(in, &cn) == nil {
			n, err := cn.Network()
			if err == nil && (n.Subnet == "" || n.DockerID == "") {
				t.Fatalf("accepted a network without subnet or ID: %+v", n)
			}
			// What decodes reads the same after a round trip.
			if err == nil {
				b, _ := json.Marshal(cn)
				var again CreateNetworkRequest
				if err := Decode(b, &again); err != nil {
					t.Fatalf("re-encoded request refused: %v", err)
				}
				if n2, err := again.Network(); err != nil || n2 != n {
					t.Fatalf("round trip changed the network: %+v -> %+v (%v)", n, n2, err)
				}
			}
		}
		var pc ConnectivityRequest
		if Decode(in, &pc) == nil {
			if ports, err := pc.PortMaps(); err == nil {
				for _, p := range ports {
					if p.HostPort == 0 || p.Port == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
						t.Fatalf("accepted port %+v", p)
					}
				}
			}
		}
		var ce CreateEndpointRequest
		_ = Decode(in, &ce)
		var ra RequestAddressRequest
		_ = Decode(in, &ra)
		var j JoinRequest
		_ = Decode(in, &j)
	})
}
