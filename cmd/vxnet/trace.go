package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/trace"
	"github.com/vxnet/vxnet/internal/trace/capture"
)

// tracer is the agent's real Tracer: packet sockets and a raw ICMP socket.
type tracer struct{}

func (tracer) Tap(nsPath, iface string, p trace.Probe, port uint16) (trace.Tap, error) {
	return capture.StartTap(nsPath, iface, p, port)
}
func (tracer) Send(nsPath string, p trace.Probe, size int) error {
	return capture.Send(nsPath, p, size)
}

// errNotReached makes 'vxnet trace' exit 1 when the reply did not come back.
var errNotReached = errors.New("the probe did not make the round trip")

func newTraceCmd() *cobra.Command {
	var cf clientFlags
	var size int
	var v6 bool
	cmd := &cobra.Command{
		Use:   "trace SRC DST",
		Short: "Send one probe from SRC (an endpoint on this host) to DST and show every point it crossed, on both hosts (exit 1 if no reply)",
		Long: `SRC and DST are endpoint names, aliases, addresses or IDs of one network.
The agent taps the source's veth, the bridge, the vxlan device and the
underlay here, asks DST's agent to tap its underlay, vxlan device, bridge and
the destination's veth, sends one ICMP echo (DF set) from SRC's namespace
and reports which points saw the request and the reply (with the VNI and
outer addresses once encapsulated), the first point that did not, and what
usually drops a frame there.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := cf.client().Trace(api.TraceRequest{Src: args[0], Dst: args[1], Size: size, IPv6: v6})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if cf.json {
				err = printJSON(out, res)
			} else {
				printTrace(out, res)
			}
			if err == nil && !res.Replied {
				cmd.SilenceUsage = true
				err = errNotReached
			}
			return err
		},
	}
	cf.add(cmd, true)
	cmd.Flags().IntVar(&size, "size", 56, "ICMP payload bytes of the probe (the packet is 28 more, 48 with -6)")
	cmd.Flags().BoolVarP(&v6, "ipv6", "6", false, "send an ICMPv6 probe between the endpoints' IPv6 addresses (also when DST is an IPv6 address, and on an IPv6-only network)")
	return cmd
}

func printTrace(out io.Writer, r api.TraceResult) {
	family := ""
	if r.IPv6 {
		family = ", IPv6"
	}
	fmt.Fprintf(out, "%s -> %s on %s (VNI %d), %d bytes of payload, DF%s\n", r.Src, r.Dst, r.Network, r.VNI, r.Size, family)
	if r.Via != "" {
		fmt.Fprintf(out, "its host is reached at %s\n", r.Via)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tHOST\tPOINT\tIFACE\tDIR\tSEEN")
	for _, h := range r.Hops {
		seen, mark := "-", "x"
		switch {
		case h.Error != "":
			seen, mark = "no capture: "+h.Error, "?"
		case h.Seen:
			seen, mark = h.Detail, "+"
		case h.Bypassed:
			seen, mark = "bypassed: the fast path (un)wrapped it", "~"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", mark, h.Host, h.Point, h.Iface, h.Dir, seen)
	}
	tw.Flush()
	if r.Replied {
		fmt.Fprintln(out, "\nthe reply came back: the path works")
		return
	}
	fmt.Fprintf(out, "\nvanished at %s: %s\n", r.Vanished, r.Why)
}
