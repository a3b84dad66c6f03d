package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

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
			m := l.Matrix(time.Second)
			l.PrintMatrix(out, m)
			ok := lab.MatrixOK(m)
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
	up.Flags().BoolVar(&static, "static", false, "program the hosts from the lab's own plan instead of running one agent per host")
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
	cmd.AddCommand(up, down, matrix, newConvergeCmd(g))
	return cmd
}

func printLab(cmd *cobra.Command, l *lab.Lab) {
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, "hosts (underlay 198.18.0.0/24, switch namespace "+l.Switch+"):")
	for _, h := range l.Hosts {
		fmt.Fprintf(out, "  %-4s %-12s netns %s\n", h.Name, h.Addr, h.Netns)
	}
	fmt.Fprintln(out, "networks:")
	for _, n := range l.Networks {
		fmt.Fprintf(out, "  %-6s VNI %-6d subnet %-16s anycast gateway %s\n", n.Name, n.VNI, n.Subnet, n.Gateway)
	}
	fmt.Fprintln(out, "containers:")
	for _, c := range l.Containers {
		fmt.Fprintf(out, "  %-10s on %-3s %-6s %-14s %s  netns %s\n", c.Name, c.Host, c.Network, c.IP, c.MAC, c.Netns)
	}
}

func newConvergeCmd(g *globals) *cobra.Command {
	var hosts, samples int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "converge",
		Short: "Benchmark: time from attach on one host to first reply from another, with real agents",
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			name := "cv"
			cfg := lab.Config{Name: name, Hosts: hosts, Networks: 1, PerHost: 1, Agent: true, Binary: exe, Log: g.logger()}
			l, err := lab.Up(cfg)
			if err != nil {
				return err
			}
			defer lab.Down(name)
			res, err := l.MeasureConvergence(samples)
			if err != nil {
				return err
			}
			var prog, reply []time.Duration
			for _, s := range res {
				prog, reply = append(prog, s.Programmed), append(reply, s.FirstReply)
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			out := map[string]any{"hosts": hosts, "samples": len(res),
				"programmed_p50_ms": ms(lab.Percentile(prog, 50)), "programmed_p99_ms": ms(lab.Percentile(prog, 99)),
				"converge_p50_ms": ms(lab.Percentile(reply, 50)), "converge_p99_ms": ms(lab.Percentile(reply, 99))}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "hosts=%d samples=%d  attach->programmed on peer p50=%.1fms p99=%.1fms  attach->first reply p50=%.1fms p99=%.1fms\n",
				hosts, len(res), out["programmed_p50_ms"], out["programmed_p99_ms"], out["converge_p50_ms"], out["converge_p99_ms"])
			return nil
		},
	}
	cmd.Flags().IntVar(&hosts, "hosts", 3, "number of hosts")
	cmd.Flags().IntVar(&samples, "samples", 50, "number of attaches to time")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
