package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/nsutil"
	"github.com/vxnet/vxnet/internal/reconcile"
)

func newUninstallCmd() *cobra.Command {
	var socket, stateDir, pluginSocket, healthNetns string
	var purge bool
	cmd := &cobra.Command{
		Use:   "uninstall [--purge]",
		Short: "Remove everything vxnet made on this host (stop the agent first)",
		Long: "Removes every device, FDB and neighbour entry, port, nftables table and iptables rule vxnet made on this host, " +
			"the health endpoint's namespace and its sockets; with --purge also its state directory. Leaves everything else. Safe to run twice.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if _, err := api.NewClient(socket).Status(); err == nil {
				return fmt.Errorf("the agent at %s is running: stop it first (systemctl stop vxnet), or it puts everything back", socket)
			}
			dp, err := linux.Open("", nil)
			if err != nil {
				return err
			}
			defer dp.Close()
			ops, err := reconcile.RemoveAll(dp)
			for _, op := range ops {
				fmt.Fprintln(out, "removed", op)
			}
			if err != nil {
				return err
			}
			removedNS := false
			if _, err := nsutil.Inode(nsutil.Path(healthNetns)); err == nil {
				if err := nsutil.Delete(healthNetns); err != nil {
					return err
				}
				fmt.Fprintln(out, "removed namespace", nsutil.Path(healthNetns))
				removedNS = true
			}
			paths := []string{socket, pluginSocket}
			if purge {
				paths = append(paths, stateDir)
			}
			for _, p := range paths {
				if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err := os.RemoveAll(p); err != nil {
					return err
				}
				fmt.Fprintln(out, "removed", p)
			}
			if len(ops) == 0 && !removedNS {
				fmt.Fprintln(out, "no vxnet devices, entries or rules on this host")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", config.Socket, "the agent's API socket")
	f.StringVar(&stateDir, "state-dir", config.StateDir, "the agent's state directory (removed with --purge)")
	f.StringVar(&pluginSocket, "docker-plugin-socket", config.PluginSocket, "the Docker plugin socket")
	f.StringVar(&healthNetns, "health-netns", config.HealthNetns, "the namespace of the agent's health endpoint")
	f.BoolVar(&purge, "purge", false, "also remove the state directory (the node's identity, keyring and saved state)")
	return cmd
}

func newInitCmd() *cobra.Command {
	var dir, join, advertise string
	var noInbound bool
	cmd := &cobra.Command{
		Use:   "init [--join ADDR]",
		Short: "Prepare this host: a cluster key (unless there is one) and the agent's configuration",
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			keyFile := filepath.Join(dir, "key")
			if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
				if join != "" {
					return fmt.Errorf("no cluster key at %s: copy the key file of the cluster you join there first (mode 0600)", keyFile)
				}
				k := make([]byte, 32)
				if _, err := rand.Read(k); err != nil {
					return err
				}
				if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
					return err
				}
				fmt.Fprintln(out, "wrote a new cluster key to", keyFile, "(copy it to every other host, mode 0600)")
			} else if err != nil {
				return err
			} else if _, err := config.ReadKeyFile(keyFile); err != nil {
				return err
			}
			conf := map[string]string{"key-file": keyFile}
			if join != "" {
				conf["join"] = join
			}
			if advertise != "" {
				conf["advertise-addr"] = advertise
			}
			if noInbound {
				conf["no-inbound"] = "true"
			}
			b, err := json.MarshalIndent(conf, "", "  ")
			if err != nil {
				return err
			}
			confFile := filepath.Join(dir, "agent.json")
			if err := os.WriteFile(confFile, append(b, '\n'), 0o600); err != nil {
				return err
			}
			fmt.Fprintln(out, "wrote", confFile)
			fmt.Fprintln(out, "start the agent: systemctl enable --now vxnet   (or: vxnet agent --config", confFile+")")
			if join == "" {
				fmt.Fprintln(out, "on every other host, after copying the key: vxnet init --join <this host's address>")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", config.Dir, "configuration directory")
	cmd.Flags().StringVar(&join, "join", "", "address of a member of the cluster to join (none: this host starts one)")
	cmd.Flags().StringVar(&advertise, "advertise-addr", "", "the addresses peers reach this host at, preferred first, comma-separated (default: the default route's); one may be a 1:1 NAT's public address")
	cmd.Flags().BoolVar(&noInbound, "no-inbound", false, "this host accepts no inbound traffic (behind a masquerading router): encrypted networks only")
	return cmd
}
