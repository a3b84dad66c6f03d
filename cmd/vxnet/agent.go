package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/agent"
	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/config"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/health/icmp"
	"github.com/vxnet/vxnet/internal/tunnel"
)

func newAgentCmd(g *globals) *cobra.Command {
	var flags config.Flags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the vxnet agent on this host",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := flags.ApplyConfigFile(cmd.Flags()); err != nil {
				return err
			}
			log := g.logger()
			if flags.Prepare {
				return prepareHost(log, &flags)
			}
			cfg, err := flags.Build(config.Env{Hostname: os.Hostname, DefaultAddr: linux.DefaultAdvertiseAddr,
				HasAddr:   func(a netip.Addr) bool { ok, _ := linux.HostNet{}.HasAddr(a); return ok },
				HasDocker: func() bool { _, err := os.Stat("/run/docker"); return err == nil }}, log)
			if err != nil {
				return err
			}
			dp, err := linux.Open("", cfg.Log.With("component", "datapath"))
			if err != nil {
				return err
			}
			defer dp.Close()
			if cfg.Datapath, err = config.ChooseDatapath(flags.Datapath(), dp.EnableFastPath); err != nil {
				return err
			}
			cfg.Log.Info("datapath", "mode", cfg.Datapath.Mode, "reason", cfg.Datapath.Reason)
			if cfg.TunnelPort != 0 {
				if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
					return fmt.Errorf("create state directory %s: %w", cfg.StateDir, err)
				}
				key, err := tunnel.LoadOrCreateKey(cfg.StateDir)
				if err != nil {
					return err
				}
				dp.SetTunnel(key, userspaceTunnel(cfg.StateDir, cfg.Log))
				cfg.TunnelKey = key.PublicKey().String()
			}
			repl := gossipReplicator(cfg)
			if len(cfg.Etcd) > 0 {
				repl = etcdReplicator(cfg)
			}
			deps := agent.Deps{Dataplane: dp, HostNet: linux.HostNet{}, StartReplicator: repl,
				Health: healthPort{id: uint16(os.Getpid())}, Tracer: tracer{}}
			if cfg.TunnelPort != 0 {
				deps.TunnelKeys = tunnelKeys{dir: cfg.StateDir, dp: dp, start: userspaceTunnel(cfg.StateDir, cfg.Log)}
			}
			if cfg.DockerHost != "" {
				deps.Dockerd = docker.NewClient(strings.TrimPrefix(cfg.DockerHost, "unix://"))
			}
			if len(cfg.Etcd) == 0 { // before anything else is in the state directory
				if err := config.RecordGossipPort(cfg.StateDir, cfg.GossipPort); err != nil {
					return err
				}
			}
			a, err := agent.New(cfg, deps)
			if err != nil {
				return err
			}
			srv, err := serve(a, cfg, linux.HostNet{}, cfg.Log)
			if err != nil {
				return errors.Join(err, a.Close())
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stopped := make(chan struct{})
			go func() { // the front doors close first, as the agent stops
				<-ctx.Done()
				srv.stop()
				close(stopped)
			}()
			if cfg.ManageHostFirewall { // openings back at once after a firewall reload
				go keepWatching(ctx, cfg.Log, "the host's nftables ruleset", dp.WatchRuleset, a.Resync, watchPause)
			}
			if cfg.Datapath.Mode == config.DatapathBPF { // wrapped frames follow route changes at once
				go keepWatching(ctx, cfg.Log, "the host's routes", dp.WatchRoutes, a.Resync, watchPause)
			}
			err = a.Run(ctx)
			stop()
			<-stopped
			return err
		},
	}
	flags.Register(cmd.Flags())
	return cmd
}

// watchPause is how long keepWatching waits before it watches again.
const watchPause = 5 * time.Second

// keepWatching runs watch (it calls changed on every change it sees) until
// ctx ends, and starts it again, pause after it failed (a netlink socket
// that overflowed under a burst of changes, say), with a call to changed
// for what it missed meanwhile; the resyncs cover the gap.
func keepWatching(ctx context.Context, log *slog.Logger, what string, watch func(context.Context, func()) error, changed func(), pause time.Duration) {
	for {
		err := watch(ctx, changed)
		if ctx.Err() != nil {
			return
		}
		log.Warn("not watching "+what+" for a while; the resync covers it", "err", err, "again_in", pause)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		changed()
	}
}

// prepareHost makes the health namespace in the host's mount namespace, so
// that a sandboxed agent (a systemd unit with PrivateTmp= or
// ProtectSystem=, whose mounts the host never sees) finds it there, and
// `ip netns` on the host shows it, across restarts.
func prepareHost(log *slog.Logger, flags *config.Flags) error {
	sub, err := flags.HealthSubnet()
	if err != nil {
		return err
	}
	if !sub.IsValid() {
		log.Info("health probes are off: nothing to prepare")
		return nil
	}
	p, onHost, err := icmp.Namespace(flags.HealthNetns())
	if err != nil {
		return err
	}
	if !onHost {
		return fmt.Errorf("health namespace %s: made, but not in the host's mount namespace: run --prepare as root outside the agent's sandbox", p)
	}
	log.Info("health namespace ready in the host's mount namespace", "namespace", p)
	return nil
}

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Cluster keys",
		Long: "Rotate the cluster key without downtime: 'key install' the new key on every host, then 'key use' it on every host, then 'key remove' the old one on every host."}
	for _, op := range []string{"install", "use", "remove"} {
		var cf clientFlags
		var keyFile string
		c := &cobra.Command{
			Use:   op + " --key-file FILE",
			Short: map[string]string{"install": "Add a key to this agent's keyring (accepted for decryption)", "use": "Encrypt with an installed key from now on", "remove": "Drop a key that is no longer used"}[op],
			RunE: func(cmd *cobra.Command, _ []string) error {
				keys, err := config.ReadKeyFile(keyFile)
				if err != nil {
					return err
				}
				k, err := cf.client().KeyOp(op, base64.StdEncoding.EncodeToString(keys[0]))
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "keyring: primary %s, keys %s\n", k.Primary, strings.Join(k.Keys, " "))
				return nil
			},
		}
		cf.add(c, false)
		c.Flags().StringVar(&keyFile, "key-file", "", "file holding the key (first line)")
		cmd.AddCommand(c)
	}
	var rf clientFlags
	rotate := &cobra.Command{
		Use:   "rotate-node",
		Short: "Make this node's WireGuard key pair anew (the encrypted networks' tunnel): every member uses the new public key within seconds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := rf.client().KeyOp(api.OpRotateNode, "")
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node key rotated: public key %s\n", k.NodeKey)
			return nil
		},
	}
	rf.add(rotate, false)
	cmd.AddCommand(rotate)
	var lf clientFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "Fingerprints of this agent's keys (the keys themselves are never shown)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := lf.client().Keyring()
			if err != nil {
				return err
			}
			if lf.json {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "primary %s\nkeys    %s\n", k.Primary, strings.Join(k.Keys, " "))
			return nil
		},
	}
	lf.add(list, true)
	cmd.AddCommand(list)
	cmd.AddCommand(&cobra.Command{
		Use:   "generate",
		Short: "Print a new random 32-byte cluster key (base64)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			k := make([]byte, 32)
			if _, err := rand.Read(k); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(k))
			return nil
		},
	})
	return cmd
}
