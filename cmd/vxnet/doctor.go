package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/doctor"
	"github.com/vxnet/vxnet/internal/procnet"
)

func readInt(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// facts reads what the checks look at, on this host.
func facts(cf clientFlags, port int) doctor.Facts {
	f := doctor.Facts{VXLANPort: port, RPFilter: -1}
	if _, err := os.Stat("/sys/module/vxlan"); err == nil {
		f.KernelVXLAN = true
	}
	if s, err := cf.client().Status(); err == nil {
		f.Status = &s
		if h, err := cf.client().Health(true); err == nil { // every member's view: both directions of each pair
			f.Health = &h
		}
	} else {
		f.StatusErr = err
	}
	if out, err := exec.Command("iptables-save").Output(); err == nil {
		f.IPTables = string(out)
	}
	if out, err := exec.Command("ip6tables-save").Output(); err == nil {
		f.IP6Tables = string(out)
	}
	f.IPv6Forwarding = -1
	if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); err == nil {
		f.IPv6Forwarding, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if out, err := exec.Command("nft", "-a", "list", "ruleset").Output(); err == nil {
		f.Nftables = string(out)
	}
	if b, err := os.ReadFile("/proc/net/udp"); err == nil {
		f.UDPSockets = strings.Split(string(b), "\n")
		inodes := map[string]bool{}
		for _, l := range f.UDPSockets {
			if fs := strings.Fields(l); len(fs) >= 10 {
				inodes[fs[9]] = true
			}
		}
		f.PortHolders = map[string]string{}
		for ino, p := range procnet.Holders(inodes) {
			f.PortHolders[ino] = fmt.Sprintf("pid %d (%s)", p.PID, p.Comm)
		}
	}
	f.ForeignVXLAN, _ = linux.ForeignVXLAN()
	f.GCThresh3 = readInt("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
	f.ConntrackCount = readInt("/proc/sys/net/netfilter/nf_conntrack_count")
	f.ConntrackMax = readInt("/proc/sys/net/netfilter/nf_conntrack_max")
	if f.Status != nil {
		if a, err := netip.ParseAddr(f.Status.Addr); err == nil {
			if dev, _, err := (linux.HostNet{}).Underlay(a); err == nil {
				if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + dev + "/rp_filter"); err == nil {
					f.RPFilter, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				}
			}
		}
	}
	return f
}

func newDoctorCmd() *cobra.Command {
	var cf clientFlags
	var port int
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what breaks overlays: each check says ok, warn or fail, with the evidence and the fix",
		RunE: func(cmd *cobra.Command, _ []string) error {
			findings := doctor.Run(facts(cf, port))
			if cf.json {
				if err := printJSON(cmd.OutOrStdout(), findings); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				for _, f := range findings {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Level, f.Check, f.Evidence)
					if f.Fix != "" && f.Level != doctor.OK {
						fmt.Fprintf(tw, "\t\tfix: %s\n", f.Fix)
					}
				}
				tw.Flush()
			}
			if doctor.Worst(findings) == doctor.Fail {
				return errors.New("doctor found problems (fail above)")
			}
			return nil
		},
	}
	cf.add(cmd, true)
	cmd.Flags().IntVar(&port, "vxlan-port", config.VXLANPort, "the agent's VXLAN port")
	return cmd
}
