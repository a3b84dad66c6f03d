package main

import (
	"fmt"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/vxnet/vxnet/internal/agent"
	"github.com/vxnet/vxnet/internal/cluster/etcd"
	"github.com/vxnet/vxnet/internal/cluster/gossip"
	"github.com/vxnet/vxnet/internal/config"
)

// The agent's replicator, wired here: the agent knows the interface, this
// binary the stores.

// gossipReplicator starts memberlist gossip as the agent's replicator.
func gossipReplicator(cfg agent.Config) func(agent.ReplicatorConfig) (agent.Replicator, error) {
	return func(rc agent.ReplicatorConfig) (agent.Replicator, error) {
		return gossip.Start(gossip.Config{
			Name: cfg.Name, Addr: cfg.AdvertiseAddr, Binds: cfg.Binds, Advertise: cfg.Identity(), NoInbound: cfg.NoInbound, Port: cfg.GossipPort, LegacyPort: config.LegacyGossipPort, Keys: rc.Keys, Insecure: cfg.Insecure,
			OnChange: rc.OnChange, Log: cfg.Log.With("component", "gossip"), ProbeInterval: cfg.ProbeInterval,
			OnSelfConflict: rc.OnSelfConflict, OnNameClaimed: rc.OnNameClaimed, OnCall: rc.OnCall,
		}, rc.State)
	}
}

// etcdReplicator keeps the cluster state in etcd (cfg.Etcd).
func etcdReplicator(cfg agent.Config) func(agent.ReplicatorConfig) (agent.Replicator, error) {
	return func(rc agent.ReplicatorConfig) (agent.Replicator, error) {
		ec := etcd.Config{Name: cfg.Name, Addr: cfg.AdvertiseAddr,
			OnChange: rc.OnChange, OnCall: rc.OnCall, Log: cfg.Log.With("component", "etcd")}
		scheme := "http://"
		if t := cfg.EtcdTLS; t.CA != "" || t.Cert != "" || t.Key != "" {
			if t.CA == "" || (t.Cert == "") != (t.Key == "") {
				return nil, fmt.Errorf("etcd TLS: give --etcd-cacert, and --etcd-cert with --etcd-key for a client certificate (got CA %q, cert %q, key %q)", t.CA, t.Cert, t.Key)
			}
			tc, err := transport.TLSInfo{TrustedCAFile: t.CA, CertFile: t.Cert, KeyFile: t.Key}.ClientConfig()
			if err != nil {
				return nil, fmt.Errorf("etcd TLS: %w", err)
			}
			ec.TLS, scheme = tc, "https://"
		}
		for _, ep := range cfg.Etcd {
			ec.Endpoints = append(ec.Endpoints, scheme+ep)
		}
		return etcd.Start(ec, rc.State)
	}
}
