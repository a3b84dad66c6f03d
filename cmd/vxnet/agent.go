package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vxnet/vxnet/internal/agent"
	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/health/icmp"
)

func newAgentCmd(g *globals) *cobra.Command {
	var (
		cfg          agent.Config
		advertise    string
		join         string
		keyFile      string
		configFile   string
		dockerSocket string
		healthSubnet string
		datapathMode string
		store        string
		prepare      bool
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the vxnet agent on this host",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := applyConfigFile(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
			cfg.Log = g.logger()
			if prepare {
				return prepareHost(cfg.Log, healthSubnet, cfg.HealthNetns)
			}
			if cfg.Name == "" {
				h, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("hostname: %w (give --name)", err)
				}
				cfg.Name = h
			}
			var err error
			if advertise != "" {
				if cfg.AdvertiseAddr, err = netip.ParseAddr(advertise); err != nil {
					return fmt.Errorf("invalid --advertise-addr %q: want an IP address of this host", advertise)
				}
			} else if cfg.AdvertiseAddr, err = linux.DefaultAdvertiseAddr(); err != nil {
				return err
			}
			for _, j := range strings.Split(join, ",") {
				if j = strings.TrimSpace(j); j != "" {
					cfg.Join = append(cfg.Join, j)
				}
			}
			if cfg.Etcd, err = parseStore(store, join); err != nil {
				return err
			}
			// With etcd, etcd's own TLS secures the state: no cluster key.
			if len(cfg.Etcd) == 0 && keyFile != "" {
				keys, err := readKeyFile(keyFile)
				if err != nil {
					return err
				}
				cfg.Keys = keys
			} else if len(cfg.Etcd) == 0 && !cfg.Insecure {
				return fmt.Errorf("no cluster key: give --key-file (create one with 'vxnet key generate > key'), or --insecure to run unencrypted")
			}
			switch dockerSocket {
			case "none":
			case "auto":
				// Serve Docker's plugin directory when Docker is installed.
				if _, err := os.Stat("/run/docker"); err == nil {
					cfg.DockerPluginSocket = "/run/docker/plugins/vxnet.sock"
				}
			default:
				cfg.DockerPluginSocket = dockerSocket
			}
			dp, err := linux.Open("", cfg.Log.With("component", "datapath"))
			if err != nil {
				return err
			}
			defer dp.Close()
			if cfg.Datapath, err = agent.ChooseDatapath(datapathMode, dp.EnableFastPath); err != nil {
				return err
			}
			cfg.Log.Info("datapath", "mode", cfg.Datapath.Mode, "reason", cfg.Datapath.Reason)
			if cfg.HealthSubnet, err = parseHealthSubnet(healthSubnet); err != nil {
				return err
			}
			repl := gossipReplicator(cfg)
			if len(cfg.Etcd) > 0 {
				repl = etcdReplicator(cfg)
			}
			deps := agent.Deps{Dataplane: dp, Host: linux.Host{}, StartReplicator: repl,
				Health: healthPort{id: uint16(os.Getpid())}, Tracer: tracer{}}
			if cfg.DockerHost != "" {
				deps.Dockerd = docker.NewClient(strings.TrimPrefix(cfg.DockerHost, "unix://"))
			}
			a, err := agent.New(cfg, deps)
			if err != nil {
				return err
			}
			srv, err := serve(a, cfg, linux.Host{}, cfg.Log)
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
			err = a.Run(ctx)
			stop()
			<-stopped
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON file of flag values, e.g. {\"join\": \"10.0.0.1\", \"key-file\": \"/etc/vxnet/key\"}")
	f.StringVar(&cfg.Name, "name", "", "node name (default: hostname)")
	f.StringVar(&advertise, "advertise-addr", "", "VTEP and gossip address (default: source address of the default route)")
	f.StringVar(&join, "join", "", "addresses of members to join, comma separated")
	f.StringVar(&cfg.EtcdTLS.CA, "etcd-cacert", "", "CA bundle that signed the etcd servers' certificates (TLS to etcd; without it: plain HTTP)")
	f.StringVar(&cfg.EtcdTLS.Cert, "etcd-cert", "", "client certificate to present to etcd (with --etcd-key)")
	f.StringVar(&cfg.EtcdTLS.Key, "etcd-key", "", "private key of --etcd-cert")
	f.StringVar(&store, "store", "gossip", "where the cluster state lives: gossip (members gossip it), or etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster you run)")
	f.StringVar(&keyFile, "key-file", "", "cluster key file (from 'vxnet key generate')")
	f.BoolVar(&cfg.Insecure, "insecure", false, "run gossip without encryption")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/vxnet", "state directory")
	f.StringVar(&cfg.Socket, "socket", api.DefaultSocket, "local API socket")
	f.IntVar(&cfg.VXLANPort, "vxlan-port", 4789, "VXLAN UDP port")
	f.IntVar(&cfg.GossipPort, "gossip-port", 7946, "gossip port (TCP and UDP)")
	f.StringVar(&cfg.DockerHost, "docker-host", "", "local dockerd API socket (e.g. unix:///var/run/docker.sock): keep its vxnet networks equal to the cluster's")
	f.StringVar(&dockerSocket, "docker-plugin-socket", "auto", "Docker network/IPAM driver socket: a path, 'auto' (/run/docker/plugins/vxnet.sock when /run/docker exists) or 'none'")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", time.Second, "failure detection probe interval")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port, e.g. 127.0.0.1:9630)")
	f.Uint16Var(&cfg.DNSPort, "dns-port", 53533, "local port of the resolver of container names (containers' DNS queries are redirected to it at their gateway); 0 turns names off")
	f.DurationVar(&cfg.ResyncInterval, "resync-interval", 10*time.Second, "period of the full reconcile pass")
	f.StringVar(&healthSubnet, "health-subnet", "100.127.0.0/16", "subnet of the health network (one probe endpoint per host; the same on every host; no address of it appears on the hosts), or off")
	f.StringVar(&cfg.HealthNetns, "health-netns", "vxnet-health", "name of the network namespace of this host's health endpoint (/run/netns/NAME)")
	f.DurationVar(&cfg.HealthInterval, "health-interval", time.Second, "health probe period")
	f.BoolVar(&prepare, "prepare", false, "make what must exist in the host's mount namespace (the health namespace) and exit: run it, with the agent's flags, outside a sandbox that gives the agent a mount namespace of its own (the packaged unit does: ExecStartPre=+)")
	f.StringVar(&datapathMode, "datapath", agent.DatapathAuto, "bridge (bridge, veth and vxlan device only), bpf (plus TC-BPF programs that carry unicast within a network past the bridge and the host firewall), or auto (bpf where the kernel runs it)")
	return cmd
}

// prepareHost makes the health namespace in the host's mount namespace, so
// that a sandboxed agent (a systemd unit with PrivateTmp= or
// ProtectSystem=, whose mounts the host never sees) finds it there, and
// `ip netns` on the host shows it, across restarts.
func prepareHost(log *slog.Logger, healthSubnet, name string) error {
	sub, err := parseHealthSubnet(healthSubnet)
	if err != nil {
		return err
	}
	if !sub.IsValid() {
		log.Info("health probes are off: nothing to prepare")
		return nil
	}
	p, onHost, err := icmp.Namespace(name)
	if err != nil {
		return err
	}
	if !onHost {
		return fmt.Errorf("health namespace %s: made, but not in the host's mount namespace: run --prepare as root outside the agent's sandbox", p)
	}
	log.Info("health namespace ready in the host's mount namespace", "namespace", p)
	return nil
}

// applyConfigFile sets every flag named in a JSON object that the command
// line did not set.
func applyConfigFile(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	vals, err := ParseConfig(b)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range vals {
		fl := fs.Lookup(k)
		if fl == nil || k == "config" {
			return fmt.Errorf("config file %s: unknown setting %q", path, k)
		}
		if fl.Changed {
			continue
		}
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// ParseConfig reads a JSON object of flag names to values (strings, numbers
// or booleans).
func ParseConfig(b []byte) (map[string]string, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("want a JSON object of flag names to values: %w", err)
	}
	out := map[string]string{}
	for k, v := range raw {
		switch x := v.(type) {
		case string:
			out[k] = x
		case bool:
			out[k] = fmt.Sprint(x)
		case float64:
			out[k] = fmt.Sprint(x)
		default:
			return nil, fmt.Errorf("setting %q: want a string, number or boolean", k)
		}
	}
	return out, nil
}

func readKeyFile(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	var keys [][]byte
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			return nil, fmt.Errorf("key file %s: each line must be a base64 key of 16, 24 or 32 bytes (make one with 'vxnet key generate')", path)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("key file %s holds no key", path)
	}
	return keys, nil
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
				keys, err := readKeyFile(keyFile)
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

// parseStore returns the etcd endpoints of --store etcd://..., none for
// gossip; --join belongs to gossip alone.
func parseStore(s, join string) ([]string, error) {
	if s == "" || s == "gossip" {
		return nil, nil
	}
	if strings.TrimSpace(join) != "" {
		return nil, fmt.Errorf("--join %s: with --store %s members find each other in etcd; --join is for the gossip store", join, s)
	}
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok || rest == "" {
		return nil, fmt.Errorf("invalid --store %q: want gossip or etcd://HOST:PORT[,HOST:PORT...]", s)
	}
	var out []string
	for _, ep := range strings.Split(rest, ",") {
		ep = strings.TrimSpace(ep)
		ap, err := netip.ParseAddrPort(ep)
		if err != nil {
			if _, _, herr := net.SplitHostPort(ep); herr != nil || ep == "" {
				return nil, fmt.Errorf("invalid --store %q: etcd endpoint %q is not HOST:PORT", s, ep)
			}
			out = append(out, ep)
			continue
		}
		out = append(out, ap.String())
	}
	return out, nil
}
