package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// strictly decodes one YAML document into v, refusing fields v's type
// does not have (a misspelt field is an error, as the API server's
// strict validation makes it).
func strictly(doc []byte, v any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// The Kubernetes manifest (deploy/kubernetes/vxnet.yaml), validated
// offline against the API's types: a ConfigMap and a DaemonSet running the
// agent with host networking, exactly the systemd unit's capabilities (and
// SYS_CHROOT, to reach the host's mount namespace), its state and socket
// on the host; the agent's and the init container's flags are this
// binary's; and the init container's install runs for real, into
// directories standing in for the node's.
func TestKubernetesManifest(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kubernetes/vxnet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	var ds appsv1.DaemonSet
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "ConfigMap":
			err = strictly([]byte(doc), &cm)
		case "DaemonSet":
			err = strictly([]byte(doc), &ds)
		default:
			t.Fatalf("unexpected kind %q", meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
	}
	pod := ds.Spec.Template.Spec
	if ds.APIVersion != "apps/v1" || cm.Data["subnet"] == "" || !pod.HostNetwork || !pod.HostPID || len(pod.Containers) != 1 || len(pod.InitContainers) != 1 {
		t.Fatalf("daemonset %+v, configmap %+v", ds.TypeMeta, cm.Data)
	}
	if got := ds.Spec.Selector.MatchLabels; got["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Errorf("the selector %v does not select the pods %v", got, ds.Spec.Template.Labels)
	}
	agent := pod.Containers[0]
	// The unit's capabilities, read from the unit itself.
	unit, err := os.ReadFile("../../packaging/vxnet.service")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Split(string(unit), "\n") {
		if caps, ok := strings.CutPrefix(l, "AmbientCapabilities="); ok {
			for _, c := range strings.Fields(caps) {
				want = append(want, strings.TrimPrefix(c, "CAP_"))
			}
		}
	}
	want = append(want, "SYS_CHROOT")
	var got []string
	for _, c := range agent.SecurityContext.Capabilities.Add {
		got = append(got, string(c))
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) || len(agent.SecurityContext.Capabilities.Drop) != 1 || agent.SecurityContext.Privileged != nil {
		t.Errorf("capabilities %v (drop %v), want exactly %v, not privileged", got, agent.SecurityContext.Capabilities.Drop, want)
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]string{}
	for _, m := range agent.VolumeMounts {
		mounts[m.MountPath] = hostPaths[m.Name]
	}
	for in, host := range map[string]string{"/var/lib/vxnet": "/var/lib/vxnet", "/run/vxnet": "/run/vxnet", "/run/netns": "/run/netns"} {
		if mounts[in] != host {
			t.Errorf("%s is mounted from %q, want the host's %s", in, mounts[in], host)
		}
	}
	// The agent's flags parse with this binary's agent command.
	env := map[string]string{"$(NODE_NAME)": "node1", "$(NODE_IP)": "10.0.0.2", "$(JOIN)": cm.Data["join"], "$(SUBNET)": cm.Data["subnet"]}
	expand := func(args []string) []string {
		var out []string
		for _, a := range args {
			for k, v := range env {
				a = strings.ReplaceAll(a, k, v)
			}
			out = append(out, a)
		}
		return out
	}
	if agent.Command[0] != "vxnet" || agent.Command[1] != "agent" {
		t.Fatalf("agent command %v", agent.Command)
	}
	if err := newAgentCmd(&globals{}).ParseFlags(expand(agent.Command[2:])); err != nil {
		t.Errorf("the agent's flags: %v", err)
	}
	for _, a := range agent.Command {
		if v, ok := strings.CutPrefix(a, "--socket="); ok && mounts[filepath.Dir(v)] == "" {
			t.Errorf("the socket %s is not on a host mount", v)
		}
	}
	// The init container's install, for real, into stand-ins for the
	// node's directories.
	init := pod.InitContainers[0]
	dir := t.TempDir()
	plugin := filepath.Join(dir, "vxnet-cni")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range expand(init.Command[1:]) {
		a = strings.Replace(a, "=/host/", "="+dir+"/host/", 1)
		a = strings.Replace(a, "--plugin=/usr/bin/vxnet-cni", "--plugin="+plugin, 1)
		args = append(args, a)
	}
	root := newRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		t.Fatalf("the init container's %v: %v", args, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "host/opt/cni/bin/vxnet")); err != nil {
		t.Errorf("plugin not installed: %v", err)
	}
	conf, err := os.ReadFile(filepath.Join(dir, "host/etc/cni/net.d/10-vxnet-pods.conflist"))
	if err != nil || !strings.Contains(string(conf), `"subnet": "`+cm.Data["subnet"]+`"`) && !strings.Contains(string(conf), `"subnet":"`+cm.Data["subnet"]+`"`) {
		t.Errorf("conflist %s (%v)", conf, err)
	}
	initMounts := map[string]string{}
	for _, m := range init.VolumeMounts {
		initMounts[m.MountPath] = hostPaths[m.Name]
	}
	if initMounts["/host/opt/cni/bin"] != "/opt/cni/bin" || initMounts["/host/etc/cni/net.d"] != "/etc/cni/net.d" {
		t.Errorf("the init container's mounts %v", initMounts)
	}
}
