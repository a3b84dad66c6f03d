package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
)

// backend is an API backend with one network, for the CLI's own tests.
type backend struct{ attached []api.AttachRequest }

func (b *backend) Status(bool) api.Status { return api.Status{Node: "h1", Version: "v9", Format: 1} }
func (b *backend) Networks() []api.NetworkInfo {
	return []api.NetworkInfo{{Network: model.Network{Name: "web", VNI: 4097}, EffectiveMTU: 1450}}
}
func (b *backend) Network(name string) (api.NetworkInfo, error) {
	if name != "web" {
		return api.NetworkInfo{}, model.Errorf(model.ErrNotFound, "unknown network %q (known: web)", name)
	}
	return b.Networks()[0], nil
}
func (b *backend) CreateNetwork(r api.NetworkCreate) (api.NetworkInfo, error) {
	return api.NetworkInfo{}, model.Errorf(model.ErrConflict, "network name %q is already in use", r.Name)
}
func (b *backend) RemoveNetwork(string, bool) error { return errors.New("disk on fire") }
func (b *backend) Attach(r api.AttachRequest) (api.Attachment, error) {
	b.attached = append(b.attached, r)
	return api.Attachment{ID: "e1", Network: r.Network, IP: "10.0.0.5/24", Published: r.Publish, Name: r.Name}, nil
}
func (b *backend) Detach(api.DetachRequest) error      { return nil }
func (b *backend) LocalEndpoints() []api.LocalEndpoint { return nil }
func (b *backend) Keyring() api.Keyring                { return api.Keyring{Primary: "aa", Keys: []string{"aa"}} }
func (b *backend) KeyOp(api.KeyRequest) (api.Keyring, error) {
	return api.Keyring{}, nil
}

// run runs the CLI with args against the backend and returns its output
// and error (main prints the error and exits 1).
func run(t *testing.T, sock string, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs(append(args, "--socket", sock))
	err := root.Execute()
	return out.String(), err
}

func TestCLIAgainstAgent(t *testing.T) {
	dir, err := os.MkdirTemp("", "vxc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{}
	srv := api.NewServer(b)
	go srv.Serve(ln)
	defer srv.Close()

	out, err := run(t, sock, "network", "ls", "--json")
	var nets []api.NetworkInfo
	if err != nil || json.Unmarshal([]byte(out), &nets) != nil || len(nets) != 1 || nets[0].Name != "web" || nets[0].EffectiveMTU != 1450 {
		t.Errorf("network ls --json: %v %q", err, out)
	}
	out, err = run(t, sock, "status", "--json")
	var st api.Status
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Node != "h1" || st.Version != "v9" {
		t.Errorf("status --json: %v %q", err, out)
	}
	// health: a table, exit 1 (errUnhealthy) when a path is broken; --all a matrix.
	out, err = run(t, sock, "health")
	if !errors.Is(err, errUnhealthy) || !regexp.MustCompile(`(?m)^h3\s+unreachable\s.*the last 3 probes`).MatchString(out) || !regexp.MustCompile(`(?m)^h2\s+ok\s`).MatchString(out) {
		t.Errorf("health: %v %q", err, out)
	}
	out, err = run(t, sock, "health", "--all")
	if !errors.Is(err, errUnhealthy) || !regexp.MustCompile(`(?m)^h1\s+-\s+ok\s+unreachable\s`).MatchString(out) || !regexp.MustCompile(`(?m)^h2\s+ok\s+-\s+mtu\s`).MatchString(out) {
		t.Errorf("health --all: %v %q", err, out)
	}
	out, err = run(t, sock, "health", "--json")
	var hv api.Health
	if !errors.Is(err, errUnhealthy) || json.Unmarshal([]byte(out), &hv) != nil || len(hv.Peers) != 2 || hv.Peers[1].State != "unreachable" {
		t.Errorf("health --json: %v %q", err, out)
	}
	// trace: the walk, the hop where it vanished and why; exit 1 without a reply.
	out, err = run(t, sock, "trace", "c1", "c2")
	if !errors.Is(err, errNotReached) || !regexp.MustCompile(`(?m)^\+\s+h1\s+underlay\s+eth0\s+request\s+VXLAN VNI 100, 10.0.0.1 -> 10.0.0.2`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^x\s+h2\s+underlay`).MatchString(out) || !strings.Contains(out, "vanished at h2 underlay (eth0, request): lost on the underlay between h1 and h2") {
		t.Errorf("trace: %v %q", err, out)
	}
	if _, err := run(t, sock, "trace", "nope", "c2"); err == nil || !strings.Contains(err.Error(), `no endpoint is named "nope"`) {
		t.Errorf("trace of an unknown endpoint: %v", err)
	}
	out, err = run(t, sock, "attach", "web", "--netns", "/run/netns/x", "-p", "8080:80", "--name", "c1", "--alias", "db")
	if err != nil || !strings.Contains(out, "address 10.0.0.5/24") || !strings.Contains(out, "published 8080:80") {
		t.Errorf("attach: %v %q", err, out)
	}
	if len(b.attached) != 1 || b.attached[0].Name != "c1" || len(b.attached[0].Aliases) != 1 || b.attached[0].Publish[0] != "8080:80" {
		t.Errorf("the agent got %+v", b.attached)
	}
	// Errors come back whole, with their kind, and fail the command.
	for _, tc := range []struct {
		args []string
		want string
		kind error
	}{
		{[]string{"network", "inspect", "nope"}, `unknown network "nope" (known: web)`, model.ErrNotFound},
		{[]string{"network", "create", "web", "--subnet", "10.0.0.0/24"}, `network name "web" is already in use`, model.ErrConflict},
		{[]string{"network", "rm", "web"}, "disk on fire", nil},
	} {
		_, err := run(t, sock, tc.args...)
		if err == nil || err.Error() != tc.want || (tc.kind != nil && !errors.Is(err, tc.kind)) {
			t.Errorf("%v: err %v, want %q", tc.args, err, tc.want)
		}
	}
	// No agent: a clear error.
	_, err = run(t, filepath.Join(dir, "none"), "status")
	if err == nil || !strings.Contains(err.Error(), "(is 'vxnet agent' running?)") {
		t.Errorf("no agent: %v", err)
	}
}

func TestCNIInstall(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "vxnet-cni")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	root.SetArgs([]string{"cni", "install", "--network", "web", "--subnet", "10.40.0.0/16", "--plugin", plugin, "--bin-dir", bin, "--conf-dir", conf})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(bin, "vxnet")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin: %v %v", fi, err)
	}
	b, err := os.ReadFile(filepath.Join(conf, "10-vxnet-web.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || list.Name != "web" || list.CNIVersion != "1.0.0" || len(list.Plugins) != 2 ||
		list.Plugins[0]["type"] != "vxnet" || list.Plugins[0]["subnet"] != "10.40.0.0/16" || list.Plugins[1]["type"] != "portmap" {
		t.Fatalf("conflist %s (%v)", b, err)
	}
	if !strings.Contains(out.String(), "wrote "+filepath.Join(bin, "vxnet")) {
		t.Errorf("output %q", out.String())
	}
	root = newRoot()
	root.SetArgs([]string{"cni", "install", "--network", "Bad Name", "--plugin", plugin, "--bin-dir", bin, "--conf-dir", conf})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), `invalid network name "Bad Name"`) {
		t.Errorf("bad name: %v", err)
	}
}

func TestInit(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"init", "--dir", dir}, args...))
		err := root.Execute()
		return out.String(), err
	}
	// Joining without the cluster's key is refused before anything is written.
	if _, err := run("--join", "10.0.0.1"); err == nil || err.Error() != "no cluster key at "+filepath.Join(dir, "key")+": copy the key file of the cluster you join there first (mode 0600)" {
		t.Fatalf("join without a key: %v", err)
	}
	out, err := run()
	if err != nil || !strings.Contains(out, "wrote a new cluster key") || !strings.Contains(out, "vxnet init --join <this host's address>") {
		t.Fatalf("first init: %v %q", err, out)
	}
	key, _ := os.ReadFile(filepath.Join(dir, "key"))
	if fi, _ := os.Stat(filepath.Join(dir, "key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", fi.Mode().Perm())
	}
	if _, err := config.ReadKeyFile(filepath.Join(dir, "key")); err != nil {
		t.Fatalf("the key written is not a key: %v", err)
	}
	// Again, joining: the key stays, the configuration names the member.
	if _, err := run("--join", "10.0.0.1", "--advertise-addr", "10.0.0.2,203.0.113.2", "--no-inbound"); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "key")); string(again) != string(key) {
		t.Error("init replaced the key")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "agent.json"))
	vals, err := config.ParseConfig(b)
	if err != nil || vals["join"] != "10.0.0.1" || vals["key-file"] != filepath.Join(dir, "key") || vals["advertise-addr"] != "10.0.0.2,203.0.113.2" || vals["no-inbound"] != "true" {
		t.Fatalf("config %s: %v", b, err)
	}
	// The agent takes it.
	agent := newAgentCmd(&globals{})
	if err := config.ApplyFile(agent.Flags(), filepath.Join(dir, "agent.json")); err != nil {
		t.Fatal(err)
	}
	if v, _ := agent.Flags().GetStringSlice("advertise-addr"); len(v) != 2 || v[1] != "203.0.113.2" {
		t.Errorf("agent's --advertise-addr from the file: %q", v)
	}
	if v, _ := agent.Flags().GetBool("no-inbound"); !v {
		t.Error("agent's --no-inbound from the file: false")
	}
}

func (b *backend) Health(all bool) api.Health {
	h := api.Health{HealthReport: api.HealthReport{Node: "h1", Enabled: true, BigSize: 1450,
		Peers: []health.Peer{{Node: "h2", State: health.OK}, {Node: "h3", State: health.Unreachable, Cause: "the last 3 probes through the overlay went unanswered"}}}}
	if all {
		h.All = []api.HealthReport{h.HealthReport, {Node: "h2", Peers: []health.Peer{{Node: "h1", State: health.OK}, {Node: "h3", State: health.MTU}}}}
	}
	return h
}

func (b *backend) Trace(r api.TraceRequest) (api.TraceResult, error) {
	if r.Src != "c1" {
		return api.TraceResult{}, model.Errorf(model.ErrNotFound, "no endpoint is named %q or has that address or ID", r.Src)
	}
	return api.TraceResult{Src: "h1.web.1", Dst: "h2.web.2", Network: "web", VNI: 100, Size: 56,
		Hops: []api.TraceHop{
			{Host: "h1", Point: "container veth", Iface: "vxv1", Dir: "request", Seen: true, Detail: "98 bytes"},
			{Host: "h1", Point: "underlay", Iface: "eth0", Dir: "request", Seen: true, Detail: "VXLAN VNI 100, 10.0.0.1 -> 10.0.0.2, 148 bytes"},
			{Host: "h2", Point: "underlay", Iface: "eth0", Dir: "request"},
		},
		Vanished: "h2 underlay (eth0, request)", Why: "lost on the underlay between h1 and h2"}, nil
}
