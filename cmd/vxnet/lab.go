package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/health"
	"github.com/vxnet/vxnet/internal/lab"
)

func newLabCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "lab", Short: "Several vxnet hosts and containers on this machine, in network namespaces"}
	var cfg lab.Config
	var keep, static bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Build a lab, show the reachability matrix, and keep it (or remove it with --rm)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Log = g.logger()
			cfg.Agent = !static
			if cfg.Agent {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the vxnet binary: %w", err)
				}
				cfg.Binary = exe
			}
			if os.Geteuid() != 0 {
				return errors.New("the lab creates network namespaces: run it as root")
			}
			// Ctrl-C while building: tear down what exists, then exit.
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sig)
			go func() {
				if _, ok := <-sig; ok {
					fmt.Fprintln(os.Stderr, "interrupted: removing the lab")
					_ = lab.Down(cfg.Name)
					os.Exit(130)
				}
			}()
			start := time.Now()
			l, err := lab.Up(cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "lab %q: %d hosts, %d networks, %d containers, built in %s\n",
				l.Name, len(l.Hosts), len(l.Networks), len(l.Containers), time.Since(start).Round(time.Millisecond))
			printLab(cmd, l)
			if need, budget, ok := l.MatrixFits(); !ok {
				fmt.Fprintf(out, "warning: a full matrix needs about %d neighbour entries, and this one kernel keeps %d for all lab hosts and containers together (net.ipv4.neigh.default.gc_thresh3): expect failures that real, separate hosts would not have\n", need, budget)
			}
			m := l.Matrix(time.Second)
			l.PrintMatrix(out, m)
			ok := lab.MatrixOK(m)
			if cfg.Agent && !cfg.NoHealth {
				ok = printLabHealth(out, l) && ok
			}
			if !keep {
				if err := lab.Down(cfg.Name); err != nil {
					return fmt.Errorf("remove lab: %w", err)
				}
				fmt.Fprintf(out, "lab %q removed\n", cfg.Name)
			} else {
				fmt.Fprintf(out, "lab %q is up; remove it with: vxnet lab down --name %s\n", cfg.Name, cfg.Name)
			}
			if !ok {
				return errors.New("the reachability matrix has unexpected results")
			}
			return nil
		},
	}
	up.Flags().StringVar(&cfg.Name, "name", "lab", "lab name (namespaces are prefixed vxl-NAME-)")
	up.Flags().IntVar(&cfg.Hosts, "hosts", 3, "number of hosts")
	up.Flags().IntVar(&cfg.Networks, "networks", 2, "number of networks")
	up.Flags().IntVar(&cfg.PerHost, "per-host", 1, "containers per host and network")
	up.Flags().BoolVar(&cfg.Flood, "flood", false, "flood broadcast/multicast by head-end replication")
	up.Flags().BoolVar(&cfg.IPv6, "ipv6", false, "make every network dual-stack (IPv6 subnet fd00:198:19:J::/64 beside 198.19.J.0/24): the matrix pings by IPv4 and by IPv6")
	up.Flags().BoolVar(&cfg.Underlay6, "underlay6", false, "the hosts reach each other over IPv6 alone (underlay 2001:2::/64, no IPv4 on it): gossip and VXLAN over IPv6")
	up.Flags().IntSliceVar(&cfg.Encrypted, "encrypted", nil, "networks to encrypt (1 for net1; repeat or comma-separate): carried only inside WireGuard between the hosts")
	up.Flags().BoolVar(&cfg.Sites, "sites", false, "put the hosts on two sites, each behind a router with 1:1 NAT (private 198.18.1.0/24 and 198.18.2.0/24, public 198.18.100.0/24); each agent is reached at its private and its public address")
	up.Flags().IntVar(&cfg.Masqueraded, "masqueraded", 0, "with --sites, add this many hosts on a third site whose router masquerades and lets nothing in (their agents run with --no-inbound; they get containers on the encrypted networks only)")
	up.Flags().BoolVar(&static, "static", false, "program the hosts from the lab's own plan instead of running one agent per host")
	up.Flags().BoolVar(&cfg.NoHealth, "no-health", false, "run the agents without health probes")
	up.Flags().StringVar(&cfg.Datapath, "datapath", "", "the agents' --datapath: bridge, bpf or auto (default: the agent's, auto); with --static, bpf programs the fast path")
	up.Flags().StringVar(&cfg.HostFirewall, "host-firewall", "", "give every host a firewall before its agent starts: "+strings.Join(lab.HostFirewalls, ", ")+" (default: none)")
	up.Flags().IntVar(&cfg.Etcd, "etcd", 0, "keep the cluster state in an etcd cluster of this many members (in namespaces), not gossip")
	up.Flags().DurationVar(&cfg.ProbeInterval, "probe-interval", lab.DefaultProbeInterval, "the agents' failure detection and health probe interval")
	up.Flags().BoolVar(&keep, "keep", true, "keep the lab after showing the matrix (--keep=false removes it)")

	var name string
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove everything a lab made (works after a crash too)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %q removed\n", name)
			return nil
		},
	}
	down.Flags().StringVar(&name, "name", "lab", "lab name")

	matrix := &cobra.Command{
		Use:   "matrix",
		Short: "Probe every container pair of a running lab",
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(name)
			if err != nil {
				return err
			}
			m := l.Matrix(time.Second)
			l.PrintMatrix(cmd.OutOrStdout(), m)
			if !lab.MatrixOK(m) {
				return errors.New("the reachability matrix has unexpected results")
			}
			return nil
		},
	}
	matrix.Flags().StringVar(&name, "name", "lab", "lab name")
	cmd.AddCommand(up, down, matrix)
	return cmd
}

// printLabHealth waits for every agent's verdict on every peer and prints
// the cluster's health matrix as the first host sees it; false when a path
// is not ok.
func printLabHealth(out io.Writer, l *lab.Lab) bool {
	c := api.NewClient(l.Hosts[0].Socket)
	var h api.Health
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		h, err = c.Health(true)
		done := err == nil && len(h.All) == len(l.Hosts)
		for _, r := range h.All {
			host, _ := l.Host(r.Node)
			done = done && len(r.Peers) == l.VXLANPeers(host)
			for _, p := range r.Peers {
				done = done && p.State != health.Unknown
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(out, "\nhealth matrix (every agent probes every peer through the overlay, small and full-size with DF):\n")
	printHealthMatrix(out, h.All)
	h1 := l.Hosts[0]
	fmt.Fprintf(out, "live page of %s: http://%s/ from inside its namespace (ip netns exec %s%s ...)\n", h1.Name, netip.AddrPortFrom(h1.Addr, lab.MetricsPort), l.Prefix, h1.Name)
	for _, r := range h.All {
		for _, p := range r.Peers {
			if p.State != health.OK {
				return false
			}
		}
	}
	return len(h.All) == len(l.Hosts)
}

func printLab(cmd *cobra.Command, l *lab.Lab) {
	out := cmd.OutOrStdout()
	if l.Underlay6 {
		fmt.Fprintln(out, "hosts (IPv6 underlay 2001:2::/64, switch namespace "+l.Switch+"):")
	} else if l.Hosts[0].Site == 0 {
		fmt.Fprintln(out, "hosts (underlay 198.18.0.0/24, switch namespace "+l.Switch+"):")
	} else {
		fmt.Fprintln(out, "hosts (two sites, each behind a router with 1:1 NAT; switches siteA, siteB and wan0 in namespace "+l.Switch+"):")
	}
	for _, h := range l.Hosts {
		if h.NoInbound {
			fmt.Fprintf(out, "  %-4s site %c  private %-12s behind masquerade %-3s netns %s  (--no-inbound)\n", h.Name, 'A'+h.Site-1, h.Addr, lab.MasqueradeAddr, h.Netns)
			continue
		}
		if h.Site != 0 {
			fmt.Fprintf(out, "  %-4s site %c  private %-12s public %-14s netns %s\n", h.Name, 'A'+h.Site-1, h.Addr, h.Public, h.Netns)
			continue
		}
		dp := ""
		if l.Agent {
			if st, err := api.NewClient(h.Socket).Status(); err == nil {
				dp = "datapath " + st.Datapath
			}
		} else if l.Datapath == "bpf" {
			dp = "datapath bpf"
		}
		fmt.Fprintf(out, "  %-4s %-12s netns %s  %s\n", h.Name, h.Addr, h.Netns, dp)
	}
	fmt.Fprintln(out, "networks:")
	for _, n := range l.Networks {
		enc := ""
		if n.Encrypted {
			enc = "  encrypted (routed through WireGuard between the hosts)"
		}
		if n.Subnet6.IsValid() {
			enc = fmt.Sprintf("  IPv6 subnet %s, gateway %s", n.Subnet6, n.Gateway6) + enc
		}
		fmt.Fprintf(out, "  %-6s VNI %-6d subnet %-16s anycast gateway %s%s\n", n.Name, n.VNI, n.Subnet, n.Gateway, enc)
	}
	fmt.Fprintln(out, "containers:")
	ipWidth := 14
	for _, c := range l.Containers {
		if c.IP6.IsValid() {
			ipWidth = max(ipWidth, len(c.IP.String())+1+len(c.IP6.String()))
		}
	}
	for _, c := range l.Containers {
		ip := c.IP.String()
		if c.IP6.IsValid() {
			ip += " " + c.IP6.String()
		}
		fmt.Fprintf(out, "  %-10s on %-3s %-6s %-*s %s  netns %s\n", c.Name, c.Host, c.Network, ipWidth, ip, c.MAC, c.Netns)
	}
}
