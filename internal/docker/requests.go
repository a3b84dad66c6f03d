package docker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/vxnet/vxnet/internal/model"
)

// RequestPoolRequest is IpamDriver.RequestPool.
type RequestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

// RequestAddressRequest is IpamDriver.RequestAddress.
type RequestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

// IPAMData is one address pool of a network.
type IPAMData struct {
	AddressSpace string
	Pool         string
	Gateway      string
	AuxAddresses map[string]string
}

// CreateNetworkRequest is NetworkDriver.CreateNetwork.
type CreateNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []IPAMData
	IPv6Data  []IPAMData
}

// EndpointInterface is the interface part of CreateEndpoint.
type EndpointInterface struct {
	Address     string
	AddressIPv6 string
	MacAddress  string
}

// CreateEndpointRequest is NetworkDriver.CreateEndpoint.
type CreateEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *EndpointInterface
	Options    map[string]any
}

// JoinRequest is NetworkDriver.Join.
type JoinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

// ConnectivityRequest is NetworkDriver.ProgramExternalConnectivity (and
// RevokeExternalConnectivity, without options).
type ConnectivityRequest struct {
	NetworkID  string
	EndpointID string
	Options    map[string]any
}

// portMapOpt is where libnetwork puts `docker run -p` bindings.
const portMapOpt = "com.docker.network.portmap"

// PortBinding is one binding of portMapOpt.
type PortBinding struct {
	Proto       int // IANA protocol number: 6 tcp, 17 udp
	IP          string
	Port        uint16
	HostIP      string
	HostPort    uint16
	HostPortEnd uint16
}

// PortMaps reads the published ports of the request.
func (r ConnectivityRequest) PortMaps() ([]model.PortMap, error) {
	raw, ok := r.Options[portMapOpt]
	if !ok || raw == nil {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("option %s: %w", portMapOpt, err)
	}
	var bindings []PortBinding
	if err := json.Unmarshal(b, &bindings); err != nil {
		return nil, fmt.Errorf("malformed option %s: %w", portMapOpt, err)
	}
	var out []model.PortMap
	for _, pb := range bindings {
		proto := map[int]string{6: "tcp", 17: "udp"}[pb.Proto]
		switch {
		case proto == "":
			return nil, fmt.Errorf("published port %d: protocol %d is not supported by vxnet (tcp and udp are)", pb.Port, pb.Proto)
		case pb.HostPort == 0:
			return nil, fmt.Errorf("published port %d/%s: vxnet needs an explicit host port (-p HOSTPORT:%d)", pb.Port, proto, pb.Port)
		case pb.HostPortEnd != 0 && pb.HostPortEnd != pb.HostPort:
			return nil, fmt.Errorf("published port %d/%s: host port ranges (%d-%d) are not supported by vxnet: publish one host port", pb.Port, proto, pb.HostPort, pb.HostPortEnd)
		case pb.HostIP != "" && pb.HostIP != "0.0.0.0" && pb.HostIP != "::":
			return nil, fmt.Errorf("published port %d/%s: binding to one host address (%s) is not supported by vxnet: publish on all (-p %d:%d)", pb.Port, proto, pb.HostIP, pb.HostPort, pb.Port)
		}
		out = append(out, model.PortMap{Proto: proto, HostPort: pb.HostPort, Port: pb.Port})
	}
	return model.ValidatePorts(out)
}

// Decode parses a request body: bounded, one JSON object. Unknown fields are
// allowed (Docker adds fields over versions).
func Decode(b []byte, v any) error {
	if len(b) > 1<<20 {
		return fmt.Errorf("request of %d bytes is too large", len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed plugin request: %w", err)
	}
	if dec.More() {
		return fmt.Errorf("malformed plugin request: data after the JSON object")
	}
	return nil
}

// Network turns the request into what vxnet needs, validating the options.
func (r CreateNetworkRequest) Network() (Network, error) {
	n := Network{DockerID: r.NetworkID}
	if r.NetworkID == "" {
		return n, fmt.Errorf("CreateNetwork without a network ID")
	}
	if len(r.IPv6Data) > 1 {
		var pools []string
		for _, d := range r.IPv6Data {
			pools = append(pools, d.Pool)
		}
		return n, fmt.Errorf("vxnet networks take at most one IPv6 subnet, got %d (%s): give one IPv6 --subnet", len(pools), strings.Join(pools, ", "))
	}
	if len(r.IPv6Data) == 1 {
		if r.IPv6Data[0].Pool == "" {
			return n, fmt.Errorf("vxnet networks with --ipv6 need an explicit IPv6 subnet: give --subnet fd00:1::/64 (and --ipam-driver vxnet)")
		}
		n.Subnet6, n.Gateway6 = r.IPv6Data[0].Pool, r.IPv6Data[0].Gateway
	}
	if len(r.IPv4Data) > 1 {
		var pools []string
		for _, d := range r.IPv4Data {
			pools = append(pools, d.Pool)
		}
		return n, fmt.Errorf("vxnet networks need exactly one IPv4 subnet, got %d (%s): give one --subnet", len(pools), strings.Join(pools, ", "))
	}
	if len(r.IPv4Data) != 1 || r.IPv4Data[0].Pool == "" {
		return n, fmt.Errorf("vxnet networks need exactly one IPv4 subnet: give --subnet (and --ipam-driver vxnet)")
	}
	n.Subnet, n.Gateway = r.IPv4Data[0].Pool, r.IPv4Data[0].Gateway
	// libnetwork puts --internal beside the generic options, not in them.
	if v, ok := r.Options[OptInternal].(bool); ok {
		n.Internal = v
	}
	opts := map[string]string{}
	if g, ok := r.Options[genericOpts].(map[string]any); ok {
		for k, v := range g {
			opts[k] = fmt.Sprint(v)
		}
	}
	for k, v := range opts {
		switch k {
		case OptVNI:
			vni, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return n, fmt.Errorf("invalid -o %s=%q: want a number between %d and %d", k, v, model.MinVNI, model.MaxVNI)
			}
			if err := model.ValidateVNI(vni); err != nil {
				return n, fmt.Errorf("invalid -o %s: %w", k, err)
			}
			n.VNI = uint32(vni)
		case OptMTU:
			mtu, err := strconv.Atoi(v)
			if err != nil || mtu <= 0 {
				return n, fmt.Errorf("invalid -o %s=%q: want a positive number", k, v)
			}
			n.MTU = mtu
		case OptFlood:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return n, fmt.Errorf("invalid -o %s=%q: want true or false", k, v)
			}
			n.Flood = b
		case OptEncrypted, OptDockerEncrypted:
			if v == "" && k == OptDockerEncrypted { // `-o encrypted`, as with Docker's overlay
				v = "true"
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return n, fmt.Errorf("invalid -o %s=%q: want true or false", k, v)
			}
			n.Encrypted = b
		default:
			if strings.HasPrefix(k, "vxnet.") {
				return n, fmt.Errorf("unknown option -o %s: vxnet understands %s, %s, %s and %s", k, OptVNI, OptFlood, OptEncrypted, OptMTU)
			}
		}
	}
	return n, nil
}
