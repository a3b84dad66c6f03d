package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/tunnel"
)

// Files of the userspace tunnel device in the agent's state directory.
const (
	tunnelPIDFile = "tunnel.pid"
	tunnelLogFile = "tunnel.log"
)

// newTunnelDeviceCmd runs a userspace WireGuard device: the agent starts
// it, in a process of its own, where the kernel has no WireGuard.
func newTunnelDeviceCmd(g *globals) *cobra.Command {
	var dev, pidFile string
	var mtu int
	cmd := &cobra.Command{
		Use:    "tunnel-device",
		Short:  "Run a userspace WireGuard device (the agent starts it where the kernel has no WireGuard)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := g.logger().With("component", "tunnel", "dev", dev)
			if pidFile != "" {
				if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
					return fmt.Errorf("write pid file %s: %w", pidFile, err)
				}
				defer os.Remove(pidFile)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return tunnel.RunUserspace(ctx, dev, mtu, log)
		},
	}
	cmd.Flags().StringVar(&dev, "dev", "", "device name")
	cmd.Flags().IntVar(&mtu, "mtu", 1420, "device MTU")
	cmd.Flags().StringVar(&pidFile, "pid-file", "", "where to write the process ID")
	_ = cmd.MarkFlagRequired("dev")
	return cmd
}

// userspaceTunnel starts 'vxnet tunnel-device' in a session of its own:
// neither a signal to the agent's process group nor the agent's death
// (kill -9, an upgrade) ends it; the next agent adopts the device.
func userspaceTunnel(stateDir string, log *slog.Logger) linux.UserspaceStarter {
	return func(dev string, mtu int) error {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the vxnet binary: %w", err)
		}
		logf, err := os.OpenFile(filepath.Join(stateDir, tunnelLogFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("open tunnel log: %w", err)
		}
		defer logf.Close()
		c := exec.Command(exe, "tunnel-device", "--dev", dev, "--mtu", strconv.Itoa(mtu),
			"--pid-file", filepath.Join(stateDir, tunnelPIDFile))
		c.Stdout, c.Stderr = logf, logf
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := c.Start(); err != nil {
			return fmt.Errorf("start %s tunnel-device: %w", exe, err)
		}
		log.Info("started userspace tunnel device (the kernel has no WireGuard)", "dev", dev, "pid", c.Process.Pid)
		go func() { _ = c.Wait() }() // reaped if it ends while this agent runs
		return nil
	}
}

// tunnelKeys makes the node's WireGuard key pair anew, in the state
// directory and in the dataplane.
type tunnelKeys struct {
	dir   string
	dp    *linux.Dataplane
	start linux.UserspaceStarter
}

func (k tunnelKeys) Rotate() (string, error) {
	key, err := tunnel.NewKey(k.dir)
	if err != nil {
		return "", err
	}
	k.dp.SetTunnel(key, k.start)
	return key.PublicKey().String(), nil
}
