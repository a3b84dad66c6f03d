package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/paths"
)

type clientFlags struct {
	socket string
	json   bool
}

func (c *clientFlags) client() *api.Client { return api.NewClient(c.socket) }

func (c *clientFlags) add(cmd *cobra.Command, withJSON bool) {
	cmd.Flags().StringVar(&c.socket, "socket", api.DefaultSocket, "agent API socket")
	if withJSON {
		cmd.Flags().BoolVar(&c.json, "json", false, "print JSON")
	}
}

// displayName shows a network made through Docker by its Docker name,
// with vxnet's name of it beside.
func displayName(name, docker string) string {
	if docker == "" || docker == name {
		return name
	}
	return docker + " (" + name + ")"
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newNetworkCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Manage cluster networks"}
	var cf clientFlags
	var req api.NetworkCreate
	create := &cobra.Command{
		Use:   "create NAME --subnet CIDR",
		Short: "Create a network on every member",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			n, err := cf.client().CreateNetwork(req)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), n)
			}
			enc := ""
			if n.Encrypted {
				enc = ", encrypted (WireGuard)"
			}
			var subs []string
			if n.HasIPv4() {
				subs = append(subs, fmt.Sprintf("subnet %s, gateway %s", n.Subnet, n.Gateway))
			}
			if n.Subnet6.IsValid() {
				subs = append(subs, fmt.Sprintf("IPv6 subnet %s, IPv6 gateway %s", n.Subnet6, n.Gateway6))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "network %s: VNI %d, %s, MTU %d%s\n", n.Name, n.VNI, strings.Join(subs, ", "), n.EffectiveMTU, enc)
			return nil
		},
	}
	cf.add(create, true)
	create.Flags().StringVar(&req.Subnet, "subnet", "", "IPv4 subnet (CIDR)")
	create.Flags().Uint32Var(&req.VNI, "vni", 0, "VXLAN network identifier 1-16777215 (default: derived from the name)")
	create.Flags().StringVar(&req.Gateway, "gateway", "", "anycast gateway (default: first address)")
	create.Flags().StringVar(&req.Subnet6, "subnet6", "", "IPv6 subnet (CIDR, /64 or longer is usual): every container gets an IPv6 address too")
	create.Flags().StringVar(&req.Gateway6, "gateway6", "", "IPv6 anycast gateway (default: first address of --subnet6)")
	create.Flags().IntVar(&req.MTU, "mtu", 0, "container MTU (default: underlay MTU minus VXLAN overhead)")
	create.Flags().BoolVar(&req.Flood, "flood", false, "flood broadcast/multicast to every host (head-end replication)")
	create.Flags().BoolVar(&req.Internal, "internal", false, "no way out: no egress through the hosts, no published ports")
	create.Flags().BoolVar(&req.Encrypted, "encrypted", false, "carry the network only inside WireGuard between the hosts: nothing of it crosses the underlay in clear")

	var lf clientFlags
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List networks",
		RunE: func(cmd *cobra.Command, _ []string) error {
			nets, err := lf.client().Networks()
			if err != nil {
				return err
			}
			if lf.json {
				return printJSON(cmd.OutOrStdout(), nets)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVNI\tSUBNET\tGATEWAY\tMTU\tFLOOD\tENCRYPTED\tENDPOINTS")
			for _, n := range nets {
				total := 0
				for _, c := range n.Endpoints {
					total += c
				}
				var subs, gws []string
				if n.HasIPv4() {
					subs, gws = append(subs, n.Subnet.String()), append(gws, n.Gateway.String())
				}
				if n.Subnet6.IsValid() {
					subs, gws = append(subs, n.Subnet6.String()), append(gws, n.Gateway6.String())
				}
				sub, gw := strings.Join(subs, ","), strings.Join(gws, ",")
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%v\t%v\t%d\n", displayName(n.Name, n.DockerName), n.VNI, sub, gw, n.EffectiveMTU, n.Flood, n.Encrypted, total)
			}
			return tw.Flush()
		},
	}
	lf.add(ls, true)

	var inf clientFlags
	inspect := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show one network",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := inf.client().Network(args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), n)
		},
	}
	inf.add(inspect, false)

	var rf clientFlags
	var force bool
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a network (refused while it has endpoints, unless --force)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.client().RemoveNetwork(args[0], force); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "network %s removed\n", args[0])
			return nil
		},
	}
	rf.add(rm, false)
	rm.Flags().BoolVar(&force, "force", false, "remove even with endpoints attached")
	cmd.AddCommand(create, ls, inspect, rm)
	return cmd
}

func newAttachCmds() []*cobra.Command {
	var af clientFlags
	var req api.AttachRequest
	attach := &cobra.Command{
		Use:   "attach NETWORK --netns PATH|PID",
		Short: "Plug a container's network namespace into a network",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Network = args[0]
			a, err := af.client().Attach(req)
			if err != nil {
				return err
			}
			if af.json {
				return printJSON(cmd.OutOrStdout(), a)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "attached %s to %s: interface %s, MAC %s, MTU %d", a.Netns, a.Network, a.IfName, a.MAC, a.MTU)
			if a.IP != "" {
				fmt.Fprintf(cmd.OutOrStdout(), ", address %s, gateway %s", a.IP, a.Gateway)
			}
			if a.IP6 != "" {
				fmt.Fprintf(cmd.OutOrStdout(), ", IPv6 address %s, IPv6 gateway %s", a.IP6, a.Gateway6)
			}
			if len(a.Published) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), ", published %s", strings.Join(a.Published, " "))
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	af.add(attach, true)
	attach.Flags().StringVar(&req.Netns, "netns", "", "network namespace path (/run/netns/NAME, /proc/PID/ns/net) or PID")
	attach.Flags().StringVar(&req.IP, "ip", "", "static address (default: allocated)")
	attach.Flags().StringVar(&req.IP6, "ip6", "", "static IPv6 address, on a network with an IPv6 subnet (default: allocated)")
	attach.Flags().StringVar(&req.MAC, "mac", "", "MAC address (default: derived from the address)")
	attach.Flags().StringVar(&req.IfName, "ifname", "eth0", "interface name inside the container")
	attach.Flags().StringArrayVarP(&req.Publish, "publish", "p", nil, "publish a port at this host's addresses: HOSTPORT:PORT[/tcp|/udp] (repeatable)")
	attach.Flags().StringVar(&req.Name, "name", "", "name the network's containers resolve to this one, on every host")
	attach.Flags().StringArrayVar(&req.Aliases, "alias", nil, "another name for it (repeatable)")

	var df clientFlags
	var dreq api.DetachRequest
	detach := &cobra.Command{
		Use:   "detach NETWORK --netns PATH|PID",
		Short: "Remove a container's network namespace from a network",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dreq.Network = args[0]
			if err := df.client().Detach(dreq); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached %s from %s\n", dreq.Netns, dreq.Network)
			return nil
		},
	}
	df.add(detach, false)
	detach.Flags().StringVar(&dreq.Netns, "netns", "", "network namespace path or PID")
	return []*cobra.Command{attach, detach}
}

func newStatusCmd() *cobra.Command {
	var sf clientFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Members, networks, endpoint counts and conflicts as this agent sees them",
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := sf.client().Status()
			if err != nil {
				return err
			}
			if sf.json {
				return printJSON(cmd.OutOrStdout(), s)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "node %s (%s), vxnet %s (record format %d); last reconcile %s ago, took %s", s.Node, s.Addr, s.Version, s.Format, time.Since(s.LastSync).Round(time.Millisecond), s.LastSyncDuration.Round(time.Microsecond))
			if s.SyncError != "" {
				fmt.Fprintf(out, ", error: %s", s.SyncError)
			}
			if s.Datapath != "" {
				fmt.Fprintf(out, "\ndatapath %s (%s)", s.Datapath, s.DatapathReason)
				if s.Datapath == "bpf" {
					fmt.Fprintf(out, ": %d devices run the fast path, %d MACs on it", s.FastHooks, s.FastEntries)
					if slices.ContainsFunc(s.Networks, func(n api.NetworkStatus) bool { return n.Encrypted }) {
						fmt.Fprint(out, "; encrypted networks: within this host only (across hosts they are routed through the tunnel)")
					}
				}
			}
			if s.AddrError != "" {
				fmt.Fprintf(out, "\nERROR: %s", s.AddrError)
			}
			fmt.Fprintf(out, "\n\nMEMBERS\n")
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			versions := map[string]string{}
			for _, n := range s.Nodes {
				versions[n.Name] = fmt.Sprintf("%s (format %d)", n.Version, n.Format)
			}
			fmt.Fprintln(tw, "NAME\tADDRESS\tSTATE\tVERSION\tLAST CONTACT\tRTT")
			for _, m := range s.Members {
				last := "-"
				if !m.LastContact.IsZero() {
					last = time.Since(m.LastContact).Round(time.Millisecond).String() + " ago"
				}
				ver := versions[m.Name]
				if ver == "" {
					ver = "unknown (older than records of versions)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Addr, m.State, ver, last, m.RTT.Round(time.Microsecond))
			}
			tw.Flush()
			fmt.Fprintf(out, "\nNETWORKS\n")
			tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVNI\tSUBNET\tLOCAL\tREMOTE\tCARRIED IN")
			slices.SortFunc(s.Networks, func(x, y api.NetworkStatus) int { return cmp.Compare(x.Name, y.Name) })
			for _, n := range s.Networks {
				carried := "VXLAN"
				if n.Encrypted {
					carried = "WireGuard (encrypted)"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\n", displayName(n.Name, n.DockerName), n.VNI, n.Subnet, n.Local, n.Remote, carried)
			}
			tw.Flush()
			printPaths(out, s)
			printTunnel(out, s)
			if len(s.Conflicts) > 0 {
				fmt.Fprintf(out, "\nCONFLICTS\n  %s\n", strings.Join(s.Conflicts, "\n  "))
			}
			for node, n := range s.Unreadable {
				fmt.Fprintf(out, "\nWARNING: %d records from %s are of a newer format than this agent reads (kept and passed on, not used): upgrade this agent\n", n, node)
			}
			if s.Malformed > 0 {
				fmt.Fprintf(out, "\nrefused malformed messages: %d\n", s.Malformed)
			}
			return nil
		},
	}
	sf.add(cmd, true)
	return cmd
}

// printTunnel shows the WireGuard device and its peers, when there is one.
func printTunnel(out io.Writer, s api.Status) {
	t := s.Tunnel
	if t == nil {
		return
	}
	kind := "the kernel's WireGuard"
	if t.Userspace {
		kind = "userspace WireGuard (wireguard-go, a process of its own)"
	}
	fmt.Fprintf(out, "\nTUNNEL %s: %s, port %d, address %s, MTU %d\n", t.Dev, kind, t.Port, t.Addr, t.MTU)
	names := cluster.TunnelOwners(s.Nodes)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tENDPOINT\tLAST HANDSHAKE\tRECEIVED\tSENT\tADDRESSES")
	for _, p := range t.Peers {
		name := names[p.Key]
		if name == "" {
			name = "key " + p.Key
		}
		hs := "never"
		if !p.LastHandshake.IsZero() {
			hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d B\t%d B\t%d\n", name, p.Endpoint, hs, p.RxBytes, p.TxBytes, len(p.AllowedIPs))
	}
	tw.Flush()
}

// printPaths shows the address each peer is reached at, when this host or
// a peer is reached at more than one.
func printPaths(out io.Writer, s api.Status) {
	if len(s.Addrs) == 0 && !s.NoInbound && !slices.ContainsFunc(s.Paths, paths.Path.Probed) {
		return
	}
	switch {
	case s.NoInbound:
		fmt.Fprintf(out, "\nPATHS (this host accepts no inbound traffic: its probes keep its NAT's mappings open, and peers reach it through them)\n")
	case len(s.Addrs) > 0:
		fmt.Fprintf(out, "\nPATHS (this host is reached at %s, preferred first)\n", joinAddrs(s.Addrs))
	default:
		fmt.Fprintf(out, "\nPATHS\n")
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tUSING\tSINCE\tWHY\tADDRESSES (answers, RTT)")
	for _, p := range s.Paths {
		since := "-"
		if !p.Since.IsZero() {
			since = time.Since(p.Since).Round(time.Second).String() + " ago"
		}
		var cands []string
		for _, c := range p.Candidates {
			st := "down"
			if c.Up {
				st = c.RTT.Round(time.Microsecond).String()
			} else if c.Misses == 0 && c.Answers == 0 {
				st = "not probed"
			}
			if !p.Probed() {
				st = "only one"
			}
			cands = append(cands, fmt.Sprintf("%s (%s)", c.Addr, st))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Peer, p.Addr, since, p.Reason, strings.Join(cands, ", "))
	}
	tw.Flush()
}

func joinAddrs(addrs []netip.Addr) string {
	var s []string
	for _, a := range addrs {
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}
