package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
)

func newEndpointsCmd() *cobra.Command {
	var cf clientFlags
	var host, network string
	cmd := &cobra.Command{
		Use:     "endpoints [--host NAME] [--network NAME]",
		Aliases: []string{"ps"},
		Short:   "Endpoints cluster-wide (or one host's, one network's): name, network, host, addresses, ports, and how each was attached",
		Long: "Lists every endpoint of the cluster as this agent knows it: the container's name, network, host, addresses, published ports, " +
			"and how it was attached (docker, cni: podman, containerd or Kubernetes, attach: vxnet attach). --json prints a list of objects " +
			"with the fields name, aliases, network (the Docker name of a network made through Docker), network_id (then vxnet's name of it), " +
			"host, ip, ip6, mac, ports, from, id, since.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := cf.client().StatusWithEndpoints()
			if err != nil {
				return err
			}
			if network != "" && !hasNetwork(s, network) {
				return fmt.Errorf("unknown network %q: 'vxnet network ls' lists them", network)
			}
			if host != "" && !hasMember(s, host) {
				return fmt.Errorf("unknown host %q: 'vxnet status' lists the members", host)
			}
			rows := api.EndpointRows(s.Endpoints, api.DockerNames(s.Networks), host, network)
			if cf.json {
				return printJSON(cmd.OutOrStdout(), rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tNETWORK\tHOST\tIP\tPORTS\tFROM\tUP")
			for _, r := range rows {
				name, ports, up := r.Name, strings.Join(r.Ports, ","), "-"
				if name == "" {
					name = "-"
				}
				if ports == "" {
					ports = "-"
				}
				if !r.Since.IsZero() {
					up = time.Since(r.Since).Round(time.Second).String()
				}
				ip := r.IP
				if r.IP6 != "" {
					ip += "," + r.IP6
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, r.Network, r.Host, ip, ports, r.From, up)
			}
			return tw.Flush()
		},
	}
	cf.add(cmd, true)
	cmd.Flags().StringVar(&host, "host", "", "only this member's endpoints")
	cmd.Flags().StringVar(&network, "network", "", "only this network's endpoints")
	return cmd
}

func hasNetwork(s api.Status, name string) bool {
	for _, n := range s.Networks {
		if n.Name == name || n.DockerName == name {
			return true
		}
	}
	return false
}

func hasMember(s api.Status, name string) bool {
	for _, m := range s.Members {
		if m.Name == name {
			return true
		}
	}
	return false
}
