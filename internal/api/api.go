// Package api holds the types of the agent's local API (HTTP/JSON over a
// unix socket) and its client, used by the CLI, the lab and the plugins.
package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/paths"
	"github.com/vxnet/vxnet/internal/unixhttp"
)

// DefaultSocket is the agent's default API socket.
const DefaultSocket = "/run/vxnet/vxnet.sock"

// NetworkCreate asks for a new cluster network.
type NetworkCreate struct {
	Name     string `json:"name"`
	Subnet   string `json:"subnet"`
	VNI      uint32 `json:"vni,omitempty"` // 0: derived
	Gateway  string `json:"gateway,omitempty"`
	Subnet6  string `json:"subnet6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
	MTU      int    `json:"mtu,omitempty"`
	Flood    bool   `json:"flood,omitempty"`
	// Internal networks have no egress and no published ports.
	Internal bool `json:"internal,omitempty"`
	// Encrypted networks cross the underlay only inside WireGuard.
	Encrypted bool `json:"encrypted,omitempty"`
}

// NetworkInfo describes a network.
type NetworkInfo struct {
	model.Network
	// EffectiveMTU is the MTU used on this host.
	EffectiveMTU int `json:"effectiveMtu"`
	// Endpoints counts endpoints per node.
	Endpoints map[string]int `json:"endpoints"`
	Origin    string         `json:"origin"`
}

// AttachRequest plugs a container namespace into a network.
type AttachRequest struct {
	Network string `json:"network"`
	// Netns is a namespace path or a PID (its /proc/PID/ns/net).
	Netns string `json:"netns"`
	IP    string `json:"ip,omitempty"`
	// IP6 is a static IPv6 address on a network with an IPv6 subnet
	// (empty: one is allocated there).
	IP6    string `json:"ip6,omitempty"`
	MAC    string `json:"mac,omitempty"`
	IfName string `json:"ifname,omitempty"`
	// Publish lists ports to publish at the host's addresses,
	// HOSTPORT:PORT[/tcp|/udp].
	Publish []string `json:"publish,omitempty"`
	// Name and Aliases are what the network's other containers resolve
	// to this one, on every host.
	Name    string   `json:"name,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	// ContainerID is a runtime's ID of the container (the CNI plugin
	// gives it): the endpoint is then named after it and the interface,
	// not after the namespace, so it can be found once the namespace is
	// gone, and asking again returns the same endpoint.
	ContainerID string `json:"containerId,omitempty"`
}

// Attachment is the result of an attach.
type Attachment struct {
	ID      string `json:"id"`
	Network string `json:"network"`
	Netns   string `json:"netns"`
	IfName  string `json:"ifname"`
	HostIf  string `json:"hostIf"`
	MAC     string `json:"mac"`
	IP      string `json:"ip"` // with prefix length
	Gateway string `json:"gateway"`
	// IP6 (with prefix length) and Gateway6: on a network with an IPv6
	// subnet.
	IP6      string `json:"ip6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
	MTU      int    `json:"mtu"`
	// Published are the ports published at the host's addresses.
	Published []string `json:"published,omitempty"`
	Name      string   `json:"name,omitempty"`
	Aliases   []string `json:"aliases,omitempty"`
}

// DetachRequest removes a container namespace from a network: by
// namespace, or by container ID and interface name.
type DetachRequest struct {
	Network     string `json:"network"`
	Netns       string `json:"netns,omitempty"`
	ContainerID string `json:"containerId,omitempty"`
	IfName      string `json:"ifname,omitempty"`
}

// LocalEndpoint is an endpoint of this host as only it knows it.
type LocalEndpoint struct {
	ID          string `json:"id"`
	Network     string `json:"network"`
	Netns       string `json:"netns,omitempty"`
	IfName      string `json:"ifname"`
	ContainerID string `json:"containerId,omitempty"`
	IP          string `json:"ip"`
	IP6         string `json:"ip6,omitempty"`
	MAC         string `json:"mac"`
}

// NetworkStatus counts endpoints of a network as this host sees them.
type NetworkStatus struct {
	Name string `json:"name"`
	// DockerName is its name in the dockerds, when made through Docker.
	DockerName string `json:"dockerName,omitempty"`
	VNI        uint32 `json:"vni"`
	Subnet     string `json:"subnet"`
	Local      int    `json:"local"`
	Remote     int    `json:"remote"`
	Encrypted  bool   `json:"encrypted,omitempty"`
}

// Status is the agent's view of the cluster.
type Status struct {
	Node string `json:"node"`
	// Version is this agent's build; Format the highest record format it
	// reads. Members carry theirs.
	Version   string           `json:"version"`
	Format    int              `json:"format"`
	Addr      string           `json:"addr"`
	Members   []cluster.Member `json:"members"`
	Networks  []NetworkStatus  `json:"networks"`
	Conflicts []string         `json:"conflicts"`
	Malformed int64            `json:"malformedMessages"`
	Records   int              `json:"records"`
	// Nodes are the versions of every node's agent, as they told the cluster.
	Nodes []cluster.NodeInfo `json:"nodes,omitempty"`
	// Unreadable counts, by origin node, records of a newer format than
	// this agent reads (kept and passed on, not used): upgrade this agent.
	Unreadable map[string]int `json:"unreadable,omitempty"`
	LastSync   time.Time      `json:"lastSync,omitzero"`
	// LastSyncDuration is how long the last reconcile pass took.
	LastSyncDuration time.Duration `json:"lastSyncDuration"`
	SyncError        string        `json:"syncError,omitempty"`
	// AddrError says the advertise address has gone from the host.
	AddrError string           `json:"addrError,omitempty"`
	Syncs     int64            `json:"syncs"`
	KernelOps int64            `json:"kernelOps"`
	Endpoints []model.Endpoint `json:"endpoints,omitempty"`
	// Datapath is "bridge" or "bpf" (the BPF fast path beside the
	// bridge); DatapathReason says why.
	Datapath       string `json:"datapath,omitempty"`
	DatapathReason string `json:"datapathReason,omitempty"`
	// FastHooks and FastEntries are what the last pass wanted of the fast
	// path: devices running its program, MACs it sends straight on.
	FastHooks   int `json:"fastHooks,omitempty"`
	FastEntries int `json:"fastEntries,omitempty"`
	// Tunnel is the WireGuard device as the last pass found it (nil:
	// none): its peers' last handshakes and bytes.
	Tunnel *datapath.Tunnel `json:"tunnel,omitempty"`
	// Addrs are the addresses this host is reached at, in order of
	// preference, when not Addr alone; Paths the address used for each
	// peer and why (every peer, the probed ones with their candidates).
	Addrs []netip.Addr `json:"addrs,omitempty"`
	// NoInbound: this host accepts no inbound traffic (--no-inbound).
	NoInbound bool         `json:"noInbound,omitempty"`
	Paths     []paths.Path `json:"paths,omitempty"`
}

// HealthReport is one member's view of the overlay paths to the others,
// from probes between the health endpoints (see internal/health).
type HealthReport struct {
	Node string `json:"node"`
	// At is when the view was taken (for other members' views: when they
	// last published it).
	At time.Time `json:"at"`
	// Enabled is false when the agent runs without health probes, and
	// Error says why probing is not running (yet).
	Enabled bool          `json:"enabled"`
	Error   string        `json:"error,omitempty"`
	Peers   []health.Peer `json:"peers"`
	// Via is, for each peer reached at more than one address, the one the
	// member uses.
	Via map[string]netip.Addr `json:"via,omitempty"`
	// Unreached are, per such peer, its addresses that do not answer the
	// member's probes.
	Unreached map[string][]netip.Addr `json:"unreached,omitempty"`
	// TunnelPeers are the verdicts on the encrypted networks' path (host
	// to host through WireGuard), while the member carries one.
	TunnelPeers []health.Peer `json:"tunnelPeers,omitempty"`
	// BigSize is the size of the full-size probe (the inner MTU).
	BigSize int `json:"big_size,omitempty"`
	// Namespace is the path of this host's health namespace; Warning says
	// what is wrong with it while probes run (e.g. the host cannot see it).
	Namespace string `json:"namespace,omitempty"`
	Warning   string `json:"warning,omitempty"`
}

// Health is what GET /v1/health answers: this member's view, and with
// all=1 every member's (gathered over the cluster state), by node.
type Health struct {
	HealthReport
	All []HealthReport `json:"all,omitempty"`
	// Events are the recent verdict changes seen here, newest last.
	Events []HealthEvent `json:"events,omitempty"`
}

// HealthEvent is one change of a verdict.
type HealthEvent = health.Event

// TraceRequest asks for a walk of one probe from Src (an endpoint on this
// host) to Dst (any endpoint of its network): names, addresses or IDs.
type TraceRequest struct {
	Src  string `json:"src"`
	Dst  string `json:"dst"`
	Size int    `json:"size,omitempty"` // ICMP payload bytes (default 56)
	// IPv6 sends an ICMPv6 probe between the endpoints' IPv6 addresses
	// (so does a DST given as an IPv6 address, and an IPv6-only network).
	IPv6 bool `json:"ipv6,omitempty"`
}

// TraceHop is one tap point and what it saw of the probe.
type TraceHop struct {
	Host  string `json:"host"`
	Point string `json:"point"` // container veth, bridge, vxlan, underlay, destination veth
	Iface string `json:"iface"`
	// Dir is "request" or "reply".
	Dir  string `json:"dir"`
	Seen bool   `json:"seen"`
	// Detail says how (VNI and outer addresses once encapsulated).
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"` // the tap could not run
	// Bypassed: the fast path wrapped or unwrapped the frame itself, past
	// this vxlan device (the underlay beside it saw the frame).
	Bypassed bool `json:"bypassed,omitempty"`
}

// TraceResult is the walk: the hops in the order a frame crosses them,
// whether the reply came back, and where the probe vanished and why.
type TraceResult struct {
	Src      string     `json:"src"`
	Dst      string     `json:"dst"`
	Network  string     `json:"network"`
	VNI      uint32     `json:"vni"`
	Size     int        `json:"size"`
	IPv6     bool       `json:"ipv6,omitempty"` // the probe was ICMPv6
	Hops     []TraceHop `json:"hops"`
	Replied  bool       `json:"replied"`
	Vanished string     `json:"vanished,omitempty"` // the first hop that did not see it
	Why      string     `json:"why,omitempty"`
	// Via is the address the source's host reaches the destination's host
	// at and why, when the destination's host has several.
	Via string `json:"via,omitempty"`
}

// OpRotateNode, as a KeyRequest's Op, makes the node's WireGuard key pair
// anew (no Key).
const OpRotateNode = "rotate-node"

// KeyRequest changes an agent's keyring: Op is install, use or remove
// (or OpRotateNode).
type KeyRequest struct {
	Op  string `json:"op"`
	Key string `json:"key"` // base64
}

// Keyring lists key fingerprints (never keys), the primary first.
type Keyring struct {
	Primary string   `json:"primary"`
	Keys    []string `json:"keys"`
	// NodeKey is the node's new WireGuard public key (after OpRotateNode).
	NodeKey string `json:"nodeKey,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// StatusError is an API error with its HTTP status.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// Unwrap gives the error kind of the status, so callers test an answer
// with errors.Is(err, model.ErrNotFound) whether it came over the socket
// or from the backend in process.
func (e *StatusError) Unwrap() error {
	for kind, code := range kindStatus {
		if code == e.Code {
			return kind
		}
	}
	return nil
}

// kindStatus is the one mapping of domain error kinds to HTTP statuses.
var kindStatus = map[error]int{
	model.ErrInvalid:  http.StatusBadRequest,
	model.ErrNotFound: http.StatusNotFound,
	model.ErrConflict: http.StatusConflict,
}

// Client talks to an agent's socket.
type Client struct {
	Socket string
	c      *unixhttp.Client
}

// NewClient returns a client for the socket path.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, c: unixhttp.New(socket)}
}

// Do sends a request and decodes the answer into out (when not nil).
func (c *Client) Do(method, path string, in, out any) error {
	resp, err := c.c.Call(method, path, in, 64<<20)
	if err != nil {
		return fmt.Errorf("agent at %s: %w (is 'vxnet agent' running?)", c.Socket, err)
	}
	if resp.Code/100 != 2 {
		var e Error
		if json.Unmarshal(resp.Body, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("agent answered %s", resp.Status)
		}
		return &StatusError{Code: resp.Code, Msg: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}

// Status reads the agent's status.
func (c *Client) Status() (Status, error) {
	var s Status
	return s, c.Do(http.MethodGet, "/v1/status", nil, &s)
}

// StatusWithEndpoints reads the agent's status with every endpoint record.
func (c *Client) StatusWithEndpoints() (Status, error) {
	var s Status
	return s, c.Do(http.MethodGet, "/v1/status?endpoints=1", nil, &s)
}

// CreateNetwork creates a network.
func (c *Client) CreateNetwork(r NetworkCreate) (NetworkInfo, error) {
	var n NetworkInfo
	return n, c.Do(http.MethodPost, "/v1/networks", r, &n)
}

// Networks lists networks.
func (c *Client) Networks() ([]NetworkInfo, error) {
	var n []NetworkInfo
	return n, c.Do(http.MethodGet, "/v1/networks", nil, &n)
}

// Network inspects one network.
func (c *Client) Network(name string) (NetworkInfo, error) {
	var n NetworkInfo
	return n, c.Do(http.MethodGet, "/v1/networks/"+url.PathEscape(name), nil, &n)
}

// RemoveNetwork removes a network.
func (c *Client) RemoveNetwork(name string, force bool) error {
	q := ""
	if force {
		q = "?force=1"
	}
	return c.Do(http.MethodDelete, "/v1/networks/"+url.PathEscape(name)+q, nil, nil)
}

// Attach plugs a namespace into a network.
func (c *Client) Attach(r AttachRequest) (Attachment, error) {
	var a Attachment
	return a, c.Do(http.MethodPost, "/v1/endpoints", r, &a)
}

// Health returns this agent's health view, and with all every member's.
func (c *Client) Health(all bool) (Health, error) {
	var h Health
	path := "/v1/health"
	if all {
		path += "?all=1"
	}
	err := c.Do(http.MethodGet, path, nil, &h)
	return h, err
}

// Trace walks one probe from src to dst.
func (c *Client) Trace(r TraceRequest) (TraceResult, error) {
	var out TraceResult
	return out, c.Do(http.MethodPost, "/v1/trace", r, &out)
}

// LocalEndpoints lists this host's endpoints.
func (c *Client) LocalEndpoints() ([]LocalEndpoint, error) {
	var out []LocalEndpoint
	return out, c.Do(http.MethodGet, "/v1/endpoints", nil, &out)
}

// Detach removes a namespace from a network.
func (c *Client) Detach(r DetachRequest) error {
	return c.Do(http.MethodPost, "/v1/endpoints/detach", r, nil)
}

// KeyOp changes the agent's keyring.
func (c *Client) KeyOp(op, key string) (Keyring, error) {
	var k Keyring
	return k, c.Do(http.MethodPost, "/v1/keys", KeyRequest{Op: op, Key: key}, &k)
}

// Keyring lists the agent's key fingerprints.
func (c *Client) Keyring() (Keyring, error) {
	var k Keyring
	return k, c.Do(http.MethodGet, "/v1/keys", nil, &k)
}
