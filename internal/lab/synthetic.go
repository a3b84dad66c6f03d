package lab

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/cluster/gossip"
	"github.com/vxnet/vxnet/internal/ipam"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// Synthetic is a cluster member without a datapath, run inside a lab host
// namespace by the calling process: it announces endpoints in bulk so the
// agents' cost of programming many remote endpoints can be measured.
type Synthetic struct {
	Name   string
	Addr   netip.Addr
	State  *cluster.State
	Gossip *gossip.Gossip
}

// AddSyntheticHost adds host namespace index idx to the lab's underlay for
// a synthetic member, which must run as its own process in that namespace
// ('vxnet-bench synthetic'): its gossip dials must start inside it.
func (l *Lab) AddSyntheticHost(idx int) (Host, error) {
	if idx < 1 || idx > 250 {
		return Host{}, fmt.Errorf("synthetic host index %d: want 1-250", idx)
	}
	sw, err := nsutil.Handle(nsutil.Path(l.Switch))
	if err != nil {
		return Host{}, err
	}
	defer sw.Close()
	brl, err := sw.LinkByName("sw0")
	if err != nil {
		return Host{}, err
	}
	return addHost(sw, brl.(*netlink.Bridge), l.Prefix, fmt.Sprintf("h%d", idx), underlayAddr(idx, l.Underlay6))
}

// JoinSynthetic starts the synthetic member in the calling process, which
// must already be inside the member's namespace.
func JoinSynthetic(name string, addr netip.Addr, keyFile string, join []string) (*Synthetic, error) {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	s := &Synthetic{Name: name, Addr: addr, State: cluster.NewState(name)}
	s.Gossip, err = gossip.Start(gossip.Config{Name: name, Addr: addr, Port: GossipPort, Keys: [][]byte{key}}, s.State)
	if err != nil {
		return nil, err
	}
	// Join as an agent does, retried with backoff; one member at a time
	// from a random start, so that many members starting together do not
	// all queue at the first address.
	backoff := 500 * time.Millisecond
	next := rand.N(len(join))
	for start := time.Now(); ; next++ {
		_, err := s.Gossip.Join([]string{join[next%len(join)]})
		if err == nil {
			break
		}
		if time.Since(start) > 5*time.Minute {
			s.Gossip.Shutdown()
			return nil, err
		}
		time.Sleep(backoff/2 + rand.N(backoff))
		backoff = min(2*backoff, 10*time.Second)
	}
	return s, nil
}

// Announce publishes n endpoints of network nw at addresses from first on.
func (s *Synthetic) Announce(nw model.Network, first netip.Addr, n int) error {
	a := first
	var batch []cluster.Record
	for i := 0; i < n; i++ {
		if !nw.Subnet.Contains(a) {
			return fmt.Errorf("subnet %s has no room for %d endpoints from %s", nw.Subnet, n, first)
		}
		e := model.Endpoint{ID: fmt.Sprintf("%s.%s.%d", s.Name, nw.Name, i), Network: nw.Name, Node: s.Name, MAC: ipam.MACFor(a), IP: a}
		r, err := s.State.Put(cluster.EndpointKey(e.ID), e)
		if err != nil {
			return err
		}
		batch = append(batch, r)
		if len(batch) == 200 || i == n-1 {
			s.Gossip.Publish(batch...)
			batch = nil
		}
		a = a.Next()
	}
	return nil
}

// Stop leaves the cluster.
func (s *Synthetic) Stop() { _ = s.Gossip.Shutdown() }
