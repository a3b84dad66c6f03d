package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/health/icmp"
)

// healthPort is the agent's real health probing: a named namespace and a
// raw ICMP socket inside it.
type healthPort struct{ id uint16 }

func (healthPort) Namespace(name string) (string, bool, error) { return icmp.Namespace(name) }
func (p healthPort) Open(nsPath string) (health.Pinger, error) {
	return icmp.OpenICMP(nsPath, p.id)
}
func (healthPort) Neighbours(nsPath, ifname string, peers map[netip.Addr]net.HardwareAddr) error {
	return icmp.Neighbours(nsPath, ifname, peers)
}
func (p healthPort) OpenTunnel() (health.Pinger, error) { return icmp.OpenICMP6(p.id) }

// errUnhealthy makes 'vxnet health' exit 1 when a path is broken.
var errUnhealthy = errors.New("some overlay paths are broken")

func newHealthCmd() *cobra.Command {
	var cf clientFlags
	var all bool
	cmd := &cobra.Command{
		Use:   "health",
		Short: "The overlay path to every peer, probed through the datapath (exit 1 when one is unreachable or an MTU problem)",
		Long: `Every agent probes the health endpoint of every peer each interval with a
small echo and a full-size one (the inner MTU, DF set), through the same
veth, bridge, VXLAN and underlay path containers use. States: ok; degraded
(some probes lost); mtu (small probes answered, full-size ones lost: a
path MTU below the underlay's, or offload trouble); unreachable (nothing
answered); unknown (too few probes yet). --all shows every member's view
as a matrix (rows probe columns), gathered over the cluster state.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := cf.client().Health(all)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if cf.json {
				if err := printJSON(out, h); err != nil {
					return err
				}
			} else if all {
				printHealthMatrix(out, h.All)
			} else {
				printHealthView(out, h)
			}
			reports := []api.HealthReport{h.HealthReport}
			if all {
				reports = h.All
			}
			for _, r := range reports {
				for _, p := range append(slices.Clone(r.Peers), r.TunnelPeers...) {
					if p.State == health.Unreachable || p.State == health.MTU {
						cmd.SilenceUsage = true
						return errUnhealthy
					}
				}
			}
			return nil
		},
	}
	cf.add(cmd, true)
	cmd.Flags().BoolVar(&all, "all", false, "every member's view (the cluster's health matrix)")
	return cmd
}

func printHealthView(out io.Writer, h api.Health) {
	if !h.Enabled || h.Error != "" {
		fmt.Fprintf(out, "node %s: %s\n", h.Node, h.Error)
		if !h.Enabled {
			return
		}
	}
	if h.At.IsZero() {
		fmt.Fprintf(out, "node %s: no probe round yet\n", h.Node)
	} else {
		fmt.Fprintf(out, "node %s, probes of 84 and %d bytes (DF), as of %s ago\n", h.Node, h.BigSize, time.Since(h.At).Round(time.Millisecond))
	}
	if h.Warning != "" {
		fmt.Fprintf(out, "warning: %s\n", h.Warning)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	via := ""
	if len(h.Via) > 0 { // some peer is reached at one of several addresses
		via = "\tVIA"
	}
	fmt.Fprintln(tw, "PEER\tSTATE\tRTT\tLOSS\tFULL-SIZE LOSS\tSINCE"+via+"\tCAUSE")
	for _, p := range append(slices.Clone(h.Peers), h.TunnelPeers...) {
		name := p.Node
		if p.Path != "" {
			name += " (" + p.Path + ")"
		}
		col := ""
		if via != "" {
			col = "\t-"
			if a, ok := h.Via[p.Node]; ok {
				col = "\t" + a.String()
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f ms\t%.0f%%\t%.0f%%\t%s%s\t%s\n", name, p.State, p.RTTms, 100*p.Loss, 100*p.BigLoss,
			ago(p.Since), col, p.Cause)
	}
	tw.Flush()
	if len(h.Peers) == 0 {
		fmt.Fprintln(out, "(no peer with a health endpoint yet)")
	}
}

// ago says how long ago t was, or never for a zero time.
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

// printHealthMatrix prints one row per probing member, one column per
// probed member: the overlay, then (when any member probes it) the
// encrypted networks' path through WireGuard.
func printHealthMatrix(out io.Writer, reports []api.HealthReport) {
	var tunnel []api.HealthReport
	for _, r := range reports {
		if len(r.TunnelPeers) > 0 {
			t := r
			t.Peers = r.TunnelPeers
			tunnel = append(tunnel, t)
		}
	}
	printPathMatrix(out, reports)
	if len(tunnel) > 0 {
		fmt.Fprintln(out, "\nENCRYPTED NETWORKS' PATH (host to host through WireGuard)")
		printPathMatrix(out, tunnel)
	}
}

func printPathMatrix(out io.Writer, reports []api.HealthReport) {
	names := map[string]bool{}
	for _, r := range reports {
		names[r.Node] = true
		for _, p := range r.Peers {
			names[p.Node] = true
		}
	}
	var cols []string
	for n := range names {
		cols = append(cols, n)
	}
	slices.Sort(cols)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "FROM \\ TO\t%s\tAS OF\n", strings.Join(cols, "\t"))
	for _, r := range reports {
		cells := make([]string, len(cols))
		view := map[string]health.Peer{}
		for _, p := range r.Peers {
			view[p.Node] = p
		}
		for i, c := range cols {
			switch p, ok := view[c]; {
			case c == r.Node:
				cells[i] = "-"
			case !ok:
				cells[i] = "?"
			default:
				cells[i] = string(p.State)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Node, strings.Join(cells, "\t"), ago(r.At))
	}
	tw.Flush()
}
