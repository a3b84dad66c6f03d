// Command vxnet is the one binary of vxnet: the agent, its CLI and the lab.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/version"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vxnet:", err)
		os.Exit(1)
	}
}

type globals struct {
	verbose bool
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelInfo
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "vxnet",
		Short:         "Multi-host container networks on Linux kernel VXLAN",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	root.AddCommand(newLabCmd(g), newAgentCmd(g), newKeyCmd(), newNetworkCmd(), newStatusCmd(), newEndpointsCmd(), newHealthCmd(), newTraceCmd(), newCNICmd(), newInitCmd(), newUninstallCmd(), newDoctorCmd(), newTunnelDeviceCmd(g))
	root.AddCommand(newAttachCmds()...)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print this binary's version and the record format it reads",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "vxnet %s (record format %d)\n", version.String(), cluster.WireFormat)
		},
	})
	return root
}
