// Command vxnet-cni is vxnet's CNI plugin: it asks the local vxnet agent
// to attach containers (podman, containerd, Kubernetes) to vxnet networks.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/cni"
)

func main() {
	p := cni.Plugin{Dial: func(socket string) cni.Agent { return api.NewClient(socket) }}
	skel.PluginMainFuncs(p.Funcs(), version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "vxnet: multi-host container networks on kernel VXLAN")
}
