// Package cni is vxnet's CNI plugin (the vxnet-cni binary): a front door
// onto the local agent's endpoint transaction, like 'vxnet attach' and the
// Docker driver. It translates; the agent does the work.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
)

// ErrPluginNotAvailable is CNI's code for a plugin that cannot serve
// (STATUS, and any command while the agent is down).
const ErrPluginNotAvailable uint = 50

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.NetConf
	// Network is the vxnet network (default: the configuration's name).
	Network string `json:"network,omitempty"`
	// Subnet creates the network when it does not exist (with VNI, or one
	// derived from the name); without it the network must exist.
	Subnet string `json:"subnet,omitempty"`
	// Subnet6 makes a network created here dual-stack.
	Subnet6 string `json:"subnet6,omitempty"`
	VNI     uint32 `json:"vni,omitempty"`
	// Encrypted asks for an encrypted network: one made here is, and an
	// existing one that is not is refused (unset: either).
	Encrypted *bool `json:"encrypted,omitempty"`
	// Socket is the agent's API socket (default /run/vxnet/vxnet.sock).
	Socket string `json:"socket,omitempty"`
	// RuntimeConfig is what the runtime fills for declared capabilities.
	RuntimeConfig struct {
		Aliases map[string][]string `json:"aliases,omitempty"`
		// IPs are static addresses (the "ips" capability: podman's --ip
		// and --ip6), at most one per family, with or without a prefix
		// length.
		IPs []string `json:"ips,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	// ValidAttachments is GC's list of the attachments the runtime keeps.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

// Args are the CNI_ARGS vxnet reads: the pod or container name (podman
// and Kubernetes pass K8S_POD_NAME), static addresses (IP: one per
// family, comma-separated) and a MAC.
type Args struct {
	types.CommonArgs
	K8S_POD_NAME types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	IP           types.UnmarshallableString
	MAC          types.UnmarshallableString
}

// Agent is what the plugin needs of the agent (api.Client serves it).
type Agent interface {
	Status() (api.Status, error)
	Network(name string) (api.NetworkInfo, error)
	CreateNetwork(api.NetworkCreate) (api.NetworkInfo, error)
	Attach(api.AttachRequest) (api.Attachment, error)
	Detach(api.DetachRequest) error
	LocalEndpoints() ([]api.LocalEndpoint, error)
}

// Plugin is the plugin; Dial connects to the agent at a socket.
type Plugin struct {
	Dial func(socket string) Agent
}

// Funcs returns the plugin's commands for skel.
func (p Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

func parse(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("vxnet: malformed network configuration: %v", err), "")
	}
	if conf.Network == "" {
		conf.Network = conf.Name
	}
	if err := model.ValidateName("network", conf.Network); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "vxnet: "+err.Error(), "")
	}
	if conf.Socket == "" {
		conf.Socket = api.DefaultSocket
	}
	return conf, nil
}

// cniError maps the agent's errors to CNI error codes.
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return err
	}
	msg := "vxnet: " + err.Error()
	var se *api.StatusError
	switch {
	case !errors.As(err, &se):
		return types.NewError(ErrPluginNotAvailable, msg, "") // the agent did not answer
	case errors.Is(err, model.ErrInvalid):
		return types.NewError(types.ErrInvalidNetworkConfig, msg, "")
	case errors.Is(err, model.ErrConflict):
		return types.NewError(types.ErrTryAgainLater, msg, "")
	}
	return types.NewError(types.ErrInternal, msg, "")
}

// ensureNetwork finds the network, creating it when the configuration
// gives a subnet.
func ensureNetwork(a Agent, conf *NetConf) (api.NetworkInfo, error) {
	n, err := a.Network(conf.Network)
	if err == nil && conf.Encrypted != nil && *conf.Encrypted != n.Encrypted {
		return n, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("vxnet: network %s is %s, the configuration says \"encrypted\": %v",
			n.Name, map[bool]string{true: "encrypted", false: "not encrypted"}[n.Encrypted], *conf.Encrypted), "")
	}
	if err == nil || !errors.Is(err, model.ErrNotFound) {
		return n, err
	}
	if conf.Subnet == "" {
		return n, fmt.Errorf("%w; give \"subnet\" in the network configuration to create it, or create it with 'vxnet network create'", err)
	}
	n, err = a.CreateNetwork(api.NetworkCreate{Name: conf.Network, Subnet: conf.Subnet, Subnet6: conf.Subnet6, VNI: conf.VNI,
		Encrypted: conf.Encrypted != nil && *conf.Encrypted})
	if err != nil && errors.Is(err, model.ErrConflict) {
		// Created by another ADD at the same moment: use it if it is there.
		if again, aerr := a.Network(conf.Network); aerr == nil {
			return again, nil
		}
	}
	return n, err
}

// Add attaches the container through the agent and returns the result.
func (p Plugin) Add(args *skel.CmdArgs) error {
	conf, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	var cargs Args
	if err := types.LoadArgs(args.Args, &cargs); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "vxnet: CNI_ARGS: "+err.Error(), "")
	}
	a := p.Dial(conf.Socket)
	n, err := ensureNetwork(a, conf)
	if err != nil {
		return cniError(err)
	}
	req := api.AttachRequest{Network: n.Name, Netns: args.Netns, IfName: args.IfName, ContainerID: args.ContainerID, MAC: string(cargs.MAC)}
	if req.IP, req.IP6, err = staticIPs(string(cargs.IP), conf.RuntimeConfig.IPs); err != nil {
		return err
	}
	if name := string(cargs.K8S_POD_NAME); name != "" && model.ValidateHostname("name", name) == nil {
		req.Name = name
	}
	for _, al := range conf.RuntimeConfig.Aliases[conf.Name] {
		if model.ValidateHostname("alias", al) == nil && al != req.Name {
			req.Aliases = append(req.Aliases, al)
		}
	}
	att, err := a.Attach(req)
	if err != nil {
		return cniError(err)
	}
	res, err := result(att)
	if err != nil {
		return err
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// staticIPs sorts the static addresses asked for (CNI_ARGS IP, one or two
// comma-separated; the "ips" capability) into an IPv4 and an IPv6 one.
func staticIPs(arg string, caps []string) (ip, ip6 string, err error) {
	var all []string
	if arg != "" {
		all = strings.Split(arg, ",")
	}
	for _, s := range append(all, caps...) {
		s = strings.TrimSpace(s)
		a, perr := netip.ParseAddr(s)
		if perr != nil {
			p, pperr := netip.ParsePrefix(s)
			if pperr != nil {
				return "", "", types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("vxnet: invalid static address %q: want an IPv4 or IPv6 address", s), "")
			}
			a = p.Addr()
		}
		slot := &ip
		if a.Is6() && !a.Is4In6() {
			slot = &ip6
		}
		if *slot != "" && *slot != a.Unmap().String() {
			return "", "", types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("vxnet: two static addresses of one family (%s and %s): give at most one IPv4 and one IPv6 address", *slot, a), "")
		}
		*slot = a.Unmap().String()
	}
	return ip, ip6, nil
}

// result turns an attachment into a CNI result: its IPv4 address, and on a
// dual-stack network its IPv6 one, each with its default route.
func result(att api.Attachment) (*current.Result, error) {
	ctr := 1
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		// The host end of the veth first (chained plugins such as
		// bandwidth look for it), then the container's.
		Interfaces: []*current.Interface{{Name: att.HostIf, Mtu: att.MTU},
			{Name: att.IfName, Mac: att.MAC, Mtu: att.MTU, Sandbox: att.Netns}},
	}
	for _, a := range []struct{ ip, gw string }{{att.IP, att.Gateway}, {att.IP6, att.Gateway6}} {
		if a.ip == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(a.ip)
		if err != nil {
			return nil, types.NewError(types.ErrInternal, fmt.Sprintf("vxnet: the agent answered address %q", a.ip), "")
		}
		bits := pfx.Addr().BitLen()
		gw := net.ParseIP(a.gw)
		res.IPs = append(res.IPs, &current.IPConfig{Interface: &ctr, Gateway: gw,
			Address: net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), bits)}})
		res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}, GW: gw})
	}
	return res, nil
}

// Del detaches the container; one already gone is no error.
func (p Plugin) Del(args *skel.CmdArgs) error {
	conf, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	err = p.Dial(conf.Socket).Detach(api.DetachRequest{Network: conf.Network, ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil && !errors.Is(err, model.ErrNotFound) {
		return cniError(err)
	}
	return nil
}

// localEndpoints reads the configuration and the agent's local endpoints.
func (p Plugin) localEndpoints(args *skel.CmdArgs) (*NetConf, Agent, []api.LocalEndpoint, error) {
	conf, err := parse(args.StdinData)
	if err != nil {
		return nil, nil, nil, err
	}
	a := p.Dial(conf.Socket)
	eps, err := a.LocalEndpoints()
	if err != nil {
		return nil, nil, nil, cniError(err)
	}
	return conf, a, eps, nil
}

// Check verifies that the container is attached as the agent says: its
// endpoint exists, and its interface is in the namespace with the address
// and MAC the agent gave it.
func (p Plugin) Check(args *skel.CmdArgs) error {
	conf, a, eps, err := p.localEndpoints(args)
	if err != nil {
		return err
	}
	for _, e := range eps {
		if e.ContainerID == args.ContainerID && e.IfName == args.IfName && e.Network == conf.Network {
			if err := checkInterface(args.Netns, e); err != nil {
				return err
			}
			return checkRemotes(a, conf.Network)
		}
	}
	return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("vxnet: container %s (interface %s) is not attached to network %s", args.ContainerID, args.IfName, conf.Network), "")
}

// GC detaches the endpoints of this network the runtime no longer lists.
func (p Plugin) GC(args *skel.CmdArgs) error {
	conf, a, eps, err := p.localEndpoints(args)
	if err != nil {
		return err
	}
	valid := map[types.GCAttachment]bool{}
	for _, v := range conf.ValidAttachments {
		valid[v] = true
	}
	var errs []error
	for _, e := range eps {
		if e.ContainerID == "" || e.Network != conf.Network || valid[types.GCAttachment{ContainerID: e.ContainerID, IfName: e.IfName}] {
			continue
		}
		err := a.Detach(api.DetachRequest{Network: conf.Network, ContainerID: e.ContainerID, IfName: e.IfName})
		if err != nil && !errors.Is(err, model.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return cniError(errors.Join(errs...))
}

// Status reports whether the agent serves.
func (p Plugin) Status(args *skel.CmdArgs) error {
	conf, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	s, err := p.Dial(conf.Socket).Status()
	if err != nil {
		return types.NewError(ErrPluginNotAvailable, "vxnet: the agent does not answer: "+err.Error(), "")
	}
	if s.AddrError != "" {
		return types.NewError(ErrPluginNotAvailable, "vxnet: "+s.AddrError, "")
	}
	return nil
}
