package trace

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// The walk of one probe ('vxnet trace'): taps on every interface a frame
// crosses between two endpoints of a network, on both hosts, and the
// probe sent from the source's namespace. The service runs beside the
// agent; behind Agent it reads the endpoints and asks the other member to
// tap its side.

// Tracer is the side of tracing that touches the host: taps on
// interfaces and the probe sent from a container's namespace.
type Tracer interface {
	// Tap captures the probe's frames on iface of the namespace at nsPath
	// ("" for the agent's own).
	Tap(nsPath, iface string, p Probe, vxlanPort uint16) (Tap, error)
	// Send sends the probe's echo request from the namespace at nsPath.
	Send(nsPath string, p Probe, size int) error
}

// Tap is a running capture.
type Tap interface{ Stop() []Seen }

// Agent is what a trace needs of the agent.
type Agent interface {
	// Self is this node's name; Underlay its underlay device.
	Self() string
	Underlay() string
	// Endpoints are every endpoint the cluster knows.
	Endpoints() []model.Endpoint
	// Local returns the namespace and interface of a local endpoint (ok
	// false when the agent does not know its namespace).
	Local(id string) (netns, ifname string, ok bool)
	// Network returns a network and its effective MTU on this host.
	Network(name string) (model.Network, int, error)
	// Request calls an operation on another member.
	Request(node, op string, body any, timeout time.Duration) (json.RawMessage, error)
	// FDB returns the FDB entries programmed for a network.
	FDB(vni uint32) ([]datapath.FDB, error)
	// Via says at which of its addresses a node is reached, and why ("":
	// it has one).
	Via(node string) string
}

// Config configures a Service.
type Config struct {
	VXLANPort int
	// Fast says the BPF fast path runs: it hands frames straight into a
	// container, so a container's veth is tapped inside it.
	Fast bool
	Log  *slog.Logger
}

// Operations between agents (cluster calls).
const (
	OpStart = "trace-start"
	OpStop  = "trace-stop"
)

// window is how long a trace waits for the probe's reply.
const window = time.Second

// Service runs traces from this host and the taps other hosts ask for.
type Service struct {
	cfg    Config
	tracer Tracer
	agent  Agent

	mu       sync.Mutex
	sessions map[string]*taps // other members' sessions, by ID
}

// NewService returns the trace service over tracer.
func NewService(cfg Config, tracer Tracer, agent Agent) *Service {
	return &Service{cfg: cfg, tracer: tracer, agent: agent, sessions: map[string]*taps{}}
}

// point is one interface a trace taps: in the agent's namespace, or in a
// container's (ns) where the fast path hands frames straight to the
// container and the host end of its veth never sees them.
type point struct{ host, point, iface, ns string }

type start struct {
	Probe   Probe  `json:"probe"`
	VNI     uint32 `json:"vni"`
	DstID   string `json:"dstId"`
	Session string `json:"session"`
	// Encrypted: the network is routed through the hosts' WireGuard
	// devices (no vxlan device; on the underlay the probe is ciphertext).
	Encrypted bool `json:"encrypted,omitempty"`
}

type taps struct {
	points []point
	taps   []Tap
	errs   []string
}

func (s *Service) startTaps(points []point, p Probe) *taps {
	t := &taps{points: points, taps: make([]Tap, len(points)), errs: make([]string, len(points))}
	for i, pt := range points {
		tap, err := s.tracer.Tap(pt.ns, pt.iface, p, uint16(s.cfg.VXLANPort))
		if err != nil {
			t.errs[i] = err.Error()
			continue
		}
		t.taps[i] = tap
	}
	return t
}

// stop ends the taps and returns what each saw.
func (t *taps) stop() []Sighted {
	out := make([]Sighted, len(t.points))
	for i, pt := range t.points {
		out[i] = Sighted{Host: pt.host, Point: pt.point, Iface: pt.iface, Error: t.errs[i]}
		if pt.ns != "" {
			out[i].Iface += " (in the container)"
		}
		if t.taps[i] != nil {
			out[i].Seen = t.taps[i].Stop()
		}
	}
	return out
}

// Sighted is what one point saw (it travels between agents).
type Sighted struct {
	Host  string `json:"host"`
	Point string `json:"point"`
	Iface string `json:"iface"`
	Seen  []Seen `json:"seen"`
	Error string `json:"error,omitempty"`
}

// remotePoints are the taps on the destination's host.
func (s *Service) remotePoints(st start) []point {
	self := s.agent.Self()
	if st.Encrypted {
		return []point{{self, "tunnel", datapath.TunnelName(self), ""}, s.vethPoint("destination veth", st.DstID)}
	}
	return []point{{self, "underlay", s.agent.Underlay(), ""}, {self, "vxlan", datapath.VxlanName(st.VNI), ""},
		s.vethPoint("destination veth", st.DstID)}
}

// vethPoint taps a local endpoint's veth: its host end, or with the fast
// path (whose bpf_redirect_peer delivers into the container, past the
// host end) the container's end when the agent knows its namespace.
func (s *Service) vethPoint(name, id string) point {
	pt := point{s.agent.Self(), name, datapath.HostIfName(id), ""}
	if !s.cfg.Fast {
		return pt
	}
	if ns, ifname, ok := s.agent.Local(id); ok && ns != "" && ifname != "" {
		pt.iface, pt.ns = ifname, ns
	}
	return pt
}

// Call answers another member's trace operation (op OpStart or OpStop).
func (s *Service) Call(op string, body json.RawMessage) (any, error) {
	switch op {
	case OpStart:
		var r start
		if err := json.Unmarshal(body, &r); err != nil || r.Session == "" {
			return nil, fmt.Errorf("bad %s request", op)
		}
		t := s.startTaps(s.remotePoints(r), r.Probe)
		s.mu.Lock()
		s.sessions[r.Session] = t
		s.mu.Unlock()
		// A caller that never stops its session: stop the taps anyway.
		time.AfterFunc(30*time.Second, func() { s.take(r.Session) })
		return struct{}{}, nil
	case OpStop:
		var session string
		if err := json.Unmarshal(body, &session); err != nil {
			return nil, fmt.Errorf("bad %s request", op)
		}
		t := s.take(session)
		if t == nil {
			return nil, fmt.Errorf("no trace session %q here", session)
		}
		return t.stop(), nil
	}
	return nil, fmt.Errorf("unknown operation %q", op)
}

func (s *Service) take(session string) *taps {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.sessions[session]
	delete(s.sessions, session)
	return t
}

// findEndpoint resolves a name, alias, address or ID among eps,
// preferring network.
func findEndpoint(eps []model.Endpoint, what, network string) (model.Endpoint, error) {
	var found []model.Endpoint
	for _, e := range eps {
		if e.Network == model.HealthNetwork {
			continue
		}
		match := e.ID == what || e.Name == what || (e.IP.IsValid() && e.IP.String() == what) || (e.IP6.IsValid() && e.IP6.String() == what)
		for _, al := range e.Aliases {
			match = match || al == what
		}
		if match {
			found = append(found, e)
		}
	}
	if network != "" && len(found) > 1 {
		var same []model.Endpoint
		for _, e := range found {
			if e.Network == network {
				same = append(same, e)
			}
		}
		found = same
	}
	switch len(found) {
	case 0:
		return model.Endpoint{}, model.Errorf(model.ErrNotFound, "no endpoint is named %q or has that address or ID", what)
	case 1:
		return found[0], nil
	}
	var ids []string
	for _, e := range found {
		ids = append(ids, e.ID+" ("+e.Network+")")
	}
	return model.Endpoint{}, model.Errorf(model.ErrInvalid, "%q names %d endpoints: %s; give an endpoint ID", what, len(found), strings.Join(ids, ", "))
}

// Trace sends one probe from a local endpoint to another endpoint of its
// network and reports every tap point it crossed, on both hosts.
func (s *Service) Trace(r api.TraceRequest) (api.TraceResult, error) {
	size := r.Size
	if size == 0 {
		size = 56
	}
	eps := s.agent.Endpoints()
	src, err := findEndpoint(eps, r.Src, "")
	if err != nil {
		return api.TraceResult{}, err
	}
	self := s.agent.Self()
	if src.Node != self {
		return api.TraceResult{}, model.Errorf(model.ErrInvalid, "%s runs on %s, not here: run vxnet trace on %s", src.ID, src.Node, src.Node)
	}
	netns, _, local := s.agent.Local(src.ID)
	if !local || netns == "" {
		return api.TraceResult{}, model.Errorf(model.ErrInvalid, "vxnet does not know the namespace of %s (Docker moves the interface itself): trace from an endpoint attached with vxnet attach or the CNI plugin, or to this one from another", src.ID)
	}
	dst, err := findEndpoint(eps, r.Dst, src.Network)
	if err != nil {
		return api.TraceResult{}, err
	}
	if dst.Network != src.Network {
		return api.TraceResult{}, model.Errorf(model.ErrInvalid, "%s is on network %s and %s on %s: vxnet keeps networks apart, a trace follows one network", src.ID, src.Network, dst.ID, dst.Network)
	}
	n, mtu, err := s.agent.Network(src.Network)
	if err != nil {
		return api.TraceResult{}, err
	}
	p := Probe{Src: src.IP, Dst: dst.IP, ID: uint16(rand.N(1 << 16)), Seq: 1}
	v6, overhead := r.IPv6 || !src.IP.IsValid() || !dst.IP.IsValid(), 28
	if a, err := netip.ParseAddr(r.Dst); err == nil && a.Is6() {
		v6 = true
	}
	if v6 {
		if !src.IP6.IsValid() || !dst.IP6.IsValid() {
			return api.TraceResult{}, model.Errorf(model.ErrInvalid, "an IPv6 trace needs IPv6 addresses: network %s has no IPv6 subnet", src.Network)
		}
		p.Src, p.Dst, overhead = src.IP6, dst.IP6, 48
	}
	if size+overhead > mtu || size < 8 {
		return api.TraceResult{}, model.Errorf(model.ErrInvalid, "invalid probe size %d: want 8 to %d (the network's MTU %d less %d)", size, mtu-overhead, mtu, overhead)
	}
	// The bridge forwards between its ports without showing the frames on
	// its own device: its hop is the step from one port to the next.
	points := []point{s.vethPoint("container veth", src.ID)}
	remote := dst.Node != self
	switch {
	case remote && n.Encrypted:
		// The packet is clear on the tunnel device and ciphertext on the
		// underlay: the tunnel is the hop.
		points = append(points, point{self, "tunnel", datapath.TunnelName(self), ""})
	case remote:
		points = append(points, point{self, "vxlan", datapath.VxlanName(n.VNI), ""}, point{self, "underlay", s.agent.Underlay(), ""})
	default:
		points = append(points, s.vethPoint("destination veth", dst.ID))
	}
	session := fmt.Sprintf("%s.%x", self, rand.Uint64())
	var remoteErr error
	if remote {
		_, remoteErr = s.agent.Request(dst.Node, OpStart, start{Probe: p, VNI: n.VNI, DstID: dst.ID, Session: session, Encrypted: n.Encrypted}, 3*time.Second)
	}
	t := s.startTaps(points, p)
	sendErr := s.tracer.Send(netns, p, size)
	time.Sleep(window)
	seen := t.stop()
	var far []Sighted
	if remote && remoteErr == nil {
		var raw json.RawMessage
		if raw, remoteErr = s.agent.Request(dst.Node, OpStop, session, 3*time.Second); remoteErr == nil {
			remoteErr = json.Unmarshal(raw, &far)
		}
	}
	if sendErr != nil {
		return api.TraceResult{}, fmt.Errorf("send the probe from %s: %w", src.ID, sendErr)
	}
	res := api.TraceResult{Src: src.ID, Dst: dst.ID, Network: n.Name, VNI: n.VNI, Size: size, IPv6: v6, Via: s.agent.Via(dst.Node)}
	if remote && remoteErr != nil {
		far = nil
		names := []string{"underlay", "vxlan", "destination veth"}
		if n.Encrypted {
			names = []string{"tunnel", "destination veth"}
		}
		for _, pt := range names {
			far = append(far, Sighted{Host: dst.Node, Point: pt, Error: "no capture on " + dst.Node + ": " + remoteErr.Error()})
		}
	}
	res.Hops, res.Replied, res.Vanished, res.Why = Walk(seen, far, src, dst, s.cfg.VXLANPort, size+overhead, s.cfg.Fast)
	if strings.HasPrefix(res.Vanished, self+" vxlan ") {
		res.Why = s.explainLocalVXLAN(n.VNI, dst, res.Why)
	}
	return res, nil
}

// explainLocalVXLAN adds what the kernel holds when a probe vanished
// between this host's bridge and its vxlan device.
func (s *Service) explainLocalVXLAN(vni uint32, dst model.Endpoint, why string) string {
	fdb, err := s.agent.FDB(vni)
	if err != nil {
		return why
	}
	for _, f := range fdb {
		if strings.EqualFold(f.MAC, dst.MAC) {
			return why
		}
	}
	return fmt.Sprintf("no FDB entry for %s (%s) on %s: this host does not know where %s is (is %s a live member? see vxnet status)",
		dst.MAC, dst.ID, datapath.VxlanName(vni), dst.ID, dst.Node)
}

// Walk orders the sightings as a frame crosses the points (request out,
// reply back) and names the first point that did not see the probe.
func Walk(near, far []Sighted, src, dst model.Endpoint, port, packet int, fast bool) (hops []api.TraceHop, replied bool, vanished, why string) {
	hop := func(ts Sighted, reply bool) api.TraceHop {
		h := api.TraceHop{Host: ts.Host, Point: ts.Point, Iface: ts.Iface, Dir: "request", Error: ts.Error}
		if reply {
			h.Dir = "reply"
		}
		for _, s := range ts.Seen {
			if s.Reply == reply {
				h.Seen = true
				if s.Encap {
					h.Detail = fmt.Sprintf("VXLAN VNI %d, %s -> %s, %d bytes", s.VNI, s.OuterSrc, s.OuterDst, s.Len)
				} else {
					h.Detail = fmt.Sprintf("%d bytes", s.Len)
				}
				break
			}
		}
		return h
	}
	var req, rep []api.TraceHop
	for _, ts := range near {
		req = append(req, hop(ts, false))
	}
	for _, ts := range far {
		req = append(req, hop(ts, false))
	}
	for i := len(far) - 1; i >= 0; i-- {
		rep = append(rep, hop(far[i], true))
	}
	for i := len(near) - 1; i >= 0; i-- {
		rep = append(rep, hop(near[i], true))
	}
	hops = append(req, rep...)
	if fast {
		// The program wraps a frame itself and sends it out of the
		// underlay, and unwraps it there into the container: the vxlan
		// devices never see it.
		for i := 1; i < len(hops)-1; i++ {
			h, prev, next := &hops[i], hops[i-1], hops[i+1]
			sent := next.Host == h.Host && next.Point == "underlay" && next.Seen
			received := prev.Host == h.Host && prev.Point == "underlay" && prev.Seen && next.Seen
			h.Bypassed = h.Point == "vxlan" && !h.Seen && h.Error == "" && (sent || received)
		}
	}
	replied = len(rep) > 0 && rep[len(rep)-1].Seen
	if replied {
		return hops, true, "", "" // a sighting a tap missed is no loss
	}
	for i, h := range hops {
		if h.Seen || h.Error != "" || h.Bypassed {
			continue
		}
		vanished = fmt.Sprintf("%s %s (%s, %s)", h.Host, h.Point, h.Iface, h.Dir)
		var prev *api.TraceHop
		if i > 0 {
			prev = &hops[i-1]
		}
		why = reason(prev, h, src, dst, port, packet, packet+vxlanOverhead(near, far), fast)
		break
	}
	return hops, replied, vanished, why
}

// vxlanOverhead is what VXLAN adds on the underlay, by the family of the
// outer addresses the taps saw (IPv4 when they saw none).
func vxlanOverhead(near, far []Sighted) int {
	for _, ts := range append(slices.Clone(near), far...) {
		for _, s := range ts.Seen {
			if s.Encap {
				return model.Overhead(false, s.OuterSrc.Is6())
			}
		}
	}
	return model.OverheadIPv4
}

// reason says what usually drops a frame between the last point that saw
// it (prev; nil when nothing did) and the first that did not (h). On the
// fast path (fast) unicast inside a network meets no FORWARD chain.
func reason(prev *api.TraceHop, h api.TraceHop, src, dst model.Endpoint, port, packet, wire int, fast bool) string {
	if prev == nil {
		return fmt.Sprintf("the probe never left %s: its interface or route is missing", src.ID)
	}
	switch {
	case prev.Point == "destination veth" && prev.Dir == "request":
		return fmt.Sprintf("%s did not answer: it is down, or its own firewall drops ICMP echo", dst.ID)
	case fast && strings.HasSuffix(prev.Point, "veth") && h.Point == "vxlan":
		return fmt.Sprintf("%s did not hand it to the vxlan device: no fast-path or FDB entry for the destination (is %s a live member? see vxnet status)", h.Host, dst.Node)
	case fast && strings.HasSuffix(h.Point, "veth"):
		return fmt.Sprintf("%s did not deliver it to %s: no fast-path or neighbour entry for %s, or its interface is down", h.Host, h.Iface, dst.ID)
	case strings.HasSuffix(prev.Point, "veth") && h.Point == "vxlan":
		return fmt.Sprintf("%s's bridge did not hand it to the vxlan device: the host's FORWARD chain dropped it (br_netfilter; see vxnet doctor), or there is no FDB entry for the destination", h.Host)
	case prev.Point == "vxlan" && h.Point == "underlay":
		return fmt.Sprintf("%s's vxlan device did not send it: no route to the other host, or %d bytes do not fit the underlay", h.Host, wire)
	case prev.Point == "underlay" && h.Point == "underlay":
		why := fmt.Sprintf("lost on the underlay between %s and %s: a firewall or the network drops UDP %d between the two hosts", prev.Host, h.Host, port)
		if packet > 576 { // a large probe: the path MTU is a suspect too
			why += fmt.Sprintf(", or the path MTU is below %d bytes", wire)
		}
		return why
	case prev.Point == "tunnel" && h.Point == "tunnel":
		return fmt.Sprintf("lost between %s's and %s's WireGuard devices: a firewall or the network drops WireGuard's UDP between the two hosts, or they have no session (see the tunnel in vxnet status, vxnet health)", prev.Host, h.Host)
	case strings.HasSuffix(prev.Point, "veth") && h.Point == "tunnel":
		return fmt.Sprintf("%s did not route it into its WireGuard device: no route for %s (is %s a live member with a tunnel? see vxnet status), or vxnet's table or the host's FORWARD chain dropped it", h.Host, dst.IP, dst.Node)
	case prev.Point == "tunnel" && strings.HasSuffix(h.Point, "veth"):
		return fmt.Sprintf("%s decrypted it and did not forward it to %s: its FORWARD chain, or a missing neighbour entry", h.Host, h.Iface)
	case prev.Point == "underlay" && h.Point == "vxlan":
		return fmt.Sprintf("%s received it and did not decapsulate it: its firewall (INPUT, or vxnet's table that admits VXLAN only from members) dropped it, or the VNI or port differ", h.Host)
	case strings.HasSuffix(h.Point, "veth"):
		return fmt.Sprintf("%s's bridge did not forward it to %s: its FORWARD chain (br_netfilter; see vxnet doctor), or a missing neighbour or FDB entry", h.Host, h.Iface)
	}
	return fmt.Sprintf("dropped between %s %s and %s %s", prev.Host, prev.Point, h.Host, h.Point)
}
