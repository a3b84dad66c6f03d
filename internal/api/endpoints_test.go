package api

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

func TestEndpointFrom(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"h1.docker.0123456789abcdef", FromDocker},
		{"h1.web.c0123456789abcdef", FromCNI},
		{"h1.web.4026532281", FromAttach},
		{"h1.web.f0000331", FromAttach},
		{"node.with.dots.docker.0123", FromDocker},
		{"odd", FromAttach},
	} {
		if got := EndpointFrom(tc.id); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.id, got, tc.want)
		}
	}
}

// The rows hide the health network, filter by host and network, sort, and
// keep their documented JSON field names.
func TestEndpointRows(t *testing.T) {
	eps := []model.Endpoint{
		{ID: "h2.docker.aa", Network: "web", Node: "h2", MAC: "02:00:00:00:00:02", IP: netip.MustParseAddr("10.0.0.3"), Name: "api",
			Ports: []model.PortMap{{Proto: "tcp", HostPort: 8080, Port: 80}}},
		{ID: "h1.web.c0123456789abcdef", Network: "web", Node: "h1", MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.2"), Name: "db",
			IP6: netip.MustParseAddr("fd00::2")},
		{ID: "h1.health", Network: model.HealthNetwork, Node: "h1", IP: netip.MustParseAddr("100.127.0.1")},
		{ID: "h1.ops.77", Network: "ops", Node: "h1", IP: netip.MustParseAddr("10.1.0.2")},
	}
	for _, tc := range []struct {
		host, network string
		want          []string // IDs in order
	}{
		{"", "", []string{"h1.ops.77", "h1.web.c0123456789abcdef", "h2.docker.aa"}},
		{"h1", "", []string{"h1.ops.77", "h1.web.c0123456789abcdef"}},
		{"", "web", []string{"h1.web.c0123456789abcdef", "h2.docker.aa"}},
		{"h3", "", nil},
	} {
		rows := EndpointRows(eps, nil, tc.host, tc.network)
		var ids []string
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
		if strings.Join(ids, " ") != strings.Join(tc.want, " ") {
			t.Errorf("host %q network %q: %v, want %v", tc.host, tc.network, ids, tc.want)
		}
	}
	b, err := json.Marshal(EndpointRows(eps, nil, "h2", ""))
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"name":"api","network":"web","host":"h2","ip":"10.0.0.3","mac":"02:00:00:00:00:02","ports":["8080:80/tcp"],"from":"docker","id":"h2.docker.aa"}]`
	if string(b) != want {
		t.Errorf("JSON\n%s\nwant\n%s", b, want)
	}
	if b, _ := json.Marshal(EndpointRows(nil, nil, "", "")); string(b) != "[]" {
		t.Errorf("no endpoints: %s, want []", b)
	}
}

// A network made through Docker is shown, and found, by its Docker name.
func TestEndpointRowsDockerNames(t *testing.T) {
	eps := []model.Endpoint{{ID: "h1.docker.aa", Network: "docker-87f7d59df9fe", Node: "h1", IP: netip.MustParseAddr("10.0.0.2")}}
	names := DockerNames([]NetworkStatus{{Name: "docker-87f7d59df9fe", DockerName: "appnet"}, {Name: "web"}})
	for _, filter := range []string{"", "appnet", "docker-87f7d59df9fe"} {
		rows := EndpointRows(eps, names, "", filter)
		if len(rows) != 1 || rows[0].Network != "appnet" || rows[0].NetworkID != "docker-87f7d59df9fe" {
			t.Errorf("filter %q: %+v", filter, rows)
		}
	}
	if rows := EndpointRows(eps, names, "", "web"); len(rows) != 0 {
		t.Errorf("another network's filter: %+v", rows)
	}
}

func TestNetworkCounts(t *testing.T) {
	nets := []model.Network{{Name: "web", VNI: 7, Subnet: netip.MustParsePrefix("10.0.0.0/24"), DockerName: "appnet"},
		{Name: model.HealthNetwork, VNI: model.HealthVNI}}
	eps := []model.Endpoint{{Network: "web", Node: "h1"}, {Network: "web", Node: "h2"}, {Network: "web", Node: "h3"}, {Network: model.HealthNetwork, Node: "h1"}}
	got := NetworkCounts(nets, eps, "h1", map[string]bool{"h1": true, "h2": true})
	want := NetworkStatus{Name: "web", DockerName: "appnet", VNI: 7, Subnet: "10.0.0.0/24", Local: 1, Remote: 1}
	if len(got) != 1 || got[0] != want {
		t.Errorf("%+v, want [%+v] (h3 is not alive; the health network is left out)", got, want)
	}
}
