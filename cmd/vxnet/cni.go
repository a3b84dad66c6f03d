package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/model"
)

// cniInstall is what 'vxnet cni install' writes.
type cniInstall struct {
	BinDir, ConfDir string
	Plugin          string // the vxnet-cni binary to install
	Network         string
	Subnet          string
	Socket          string
	Version         string
	Portmap         bool
}

// conflist renders the network configuration list: vxnet, then the
// standard portmap plugin for published ports.
func (c cniInstall) conflist() ([]byte, error) {
	vx := map[string]any{"type": "vxnet", "capabilities": map[string]bool{"aliases": true}}
	if c.Subnet != "" {
		vx["subnet"] = c.Subnet
	}
	if c.Socket != api.DefaultSocket {
		vx["socket"] = c.Socket
	}
	plugins := []any{vx}
	if c.Portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	return json.MarshalIndent(map[string]any{"cniVersion": c.Version, "name": c.Network, "plugins": plugins}, "", "  ")
}

// install copies the plugin (as "vxnet", the type the conflist names) and
// writes the conflist; it returns what it wrote.
func (c cniInstall) install() ([]string, error) {
	if err := model.ValidateName("network", c.Network); err != nil {
		return nil, err
	}
	if c.Subnet != "" {
		if _, err := model.ParseSubnet(c.Subnet); err != nil {
			return nil, err
		}
	}
	src, err := os.Open(c.Plugin)
	if err != nil {
		return nil, fmt.Errorf("the vxnet-cni plugin: %w (build it with 'go build ./cmd/vxnet-cni', or give --plugin)", err)
	}
	defer src.Close()
	for _, d := range []string{c.BinDir, c.ConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(c.BinDir, "vxnet")
	tmp := bin + ".tmp"
	dst, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return nil, err
	}
	if err := dst.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, bin); err != nil { // replaced at once: a runtime never runs half a file
		return nil, err
	}
	b, err := c.conflist()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(c.ConfDir, "10-vxnet-"+c.Network+".conflist")
	if err := os.WriteFile(conf, append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return []string{bin, conf}, nil
}

func newCNICmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cni", Short: "vxnet for CNI runtimes (podman, containerd, Kubernetes)"}
	c := cniInstall{}
	install := &cobra.Command{
		Use:   "install --network NAME",
		Short: "Install the vxnet CNI plugin and a network configuration list for a vxnet network",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.Plugin == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				c.Plugin = filepath.Join(filepath.Dir(exe), "vxnet-cni")
			}
			wrote, err := c.install()
			if err != nil {
				return err
			}
			for _, w := range wrote {
				fmt.Fprintln(cmd.OutOrStdout(), "wrote", w)
			}
			return nil
		},
	}
	f := install.Flags()
	f.StringVar(&c.BinDir, "bin-dir", "/opt/cni/bin", "the runtime's CNI plugin directory")
	f.StringVar(&c.ConfDir, "conf-dir", "/etc/cni/net.d", "the runtime's CNI configuration directory")
	f.StringVar(&c.Plugin, "plugin", "", "the vxnet-cni binary (default: vxnet-cni beside this binary)")
	f.StringVar(&c.Network, "network", "", "vxnet network name (also the CNI network name)")
	f.StringVar(&c.Subnet, "subnet", "", "create the network with this subnet on the first ADD when it does not exist")
	f.StringVar(&c.Socket, "socket", api.DefaultSocket, "the agent's API socket")
	f.StringVar(&c.Version, "cni-version", "1.0.0", "cniVersion of the configuration (0.4.0, 1.0.0 or 1.1.0)")
	f.BoolVar(&c.Portmap, "portmap", true, "chain the standard portmap plugin, for published ports (podman -p)")
	_ = install.MarkFlagRequired("network")
	cmd.AddCommand(install)
	return cmd
}
