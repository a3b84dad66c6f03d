package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/model"
)

// Members: a lease per member; the others watch the member keys.

// loadMembers reads the live members and returns them with the revision
// to watch from.
func (e *Store) loadMembers() (map[string]member, int64, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	r, err := e.cli.Get(ctx, e.key("members")+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd load members: %w", err)
	}
	live := map[string]member{}
	for _, kv := range r.Kvs {
		var m member
		if json.Unmarshal(kv.Value, &m) == nil && model.ValidateName("node", m.Name) == nil {
			live[m.Name] = m
		}
	}
	return live, r.Header.Revision, nil
}

// watchMembers follows the members (and this member's calls and
// replies) from rev on, the live set already taken in.
func (e *Store) watchMembers(live map[string]member, rev int64) {
	defer e.wg.Done()
	prefix := e.key("members") + "/"
	callPrefix := e.key("calls", e.cfg.Name) + "/"
	replyPrefix := e.key("replies", e.cfg.Name) + "/"
	for e.ctx.Err() == nil {
		if live == nil {
			var err error
			if live, rev, err = e.loadMembers(); err != nil {
				e.log.Warn("etcd members", "err", err)
				time.Sleep(time.Second)
				continue
			}
			e.setMembers(live)
		}
		wctx := clientv3.WithRequireLeader(e.ctx)
		wm := e.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
		wc := e.cli.Watch(wctx, callPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		wr := e.cli.Watch(wctx, replyPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	watching:
		for {
			select {
			case resp, ok := <-wm:
				if !ok || resp.Err() != nil {
					break watching
				}
				for _, ev := range resp.Events {
					name := strings.TrimPrefix(string(ev.Kv.Key), prefix)
					if ev.Type == clientv3.EventTypeDelete {
						delete(live, name)
						continue
					}
					var m member
					if json.Unmarshal(ev.Kv.Value, &m) == nil && m.Name == name {
						live[name] = m
					}
				}
				e.setMembers(live)
			case resp, ok := <-wc:
				if !ok || resp.Err() != nil {
					break watching
				}
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypePut {
						go e.answer(ev.Kv.Value)
					}
				}
			case resp, ok := <-wr:
				if !ok || resp.Err() != nil {
					break watching
				}
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypePut {
						e.reply(ev.Kv.Value)
					}
				}
			}
		}
		live = nil // read them again, then watch again
		if e.ctx.Err() == nil {
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// setMembers takes the live member set; members gone are failed from now.
func (e *Store) setMembers(live map[string]member) {
	e.mu.Lock()
	changed := len(live) != len(e.members)
	for name, m := range e.members {
		if _, ok := live[name]; !ok {
			m.Since = time.Now()
			e.failed[name] = m
			changed = true
			e.log.Warn("member left or failed", "member", name, "addr", m.Addr)
		}
	}
	for name, m := range live {
		if old, ok := e.members[name]; !ok || old.Addr != m.Addr {
			changed = true
			delete(e.failed, name)
			e.log.Info("member joined", "member", name, "addr", m.Addr)
		}
	}
	e.members = map[string]member{}
	for k, v := range live {
		e.members[k] = v
	}
	e.mu.Unlock()
	if changed {
		e.cfg.OnChange()
		// Withdraw the failed members' endpoints once the grace is over.
		time.AfterFunc(grace+10*time.Millisecond, e.cfg.OnChange)
	}
}

// Alive returns the members holding a lease, and those whose lease ended
// less than a grace ago.
func (e *Store) Alive() []model.Node {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []model.Node
	for _, m := range e.members {
		out = append(out, model.Node{Name: m.Name, Addr: m.Addr})
	}
	if _, ok := e.members[e.cfg.Name]; !ok {
		// Self, even while etcd is unreachable.
		out = append(out, model.Node{Name: e.cfg.Name, Addr: e.cfg.Addr})
	}
	for name, f := range e.failed {
		if _, ok := e.members[name]; !ok && name != e.cfg.Name && time.Since(f.Since) < grace {
			out = append(out, model.Node{Name: name, Addr: f.Addr})
		}
	}
	slices.SortFunc(out, func(x, y model.Node) int { return cmp.Compare(x.Name, y.Name) })
	return out
}

// Members lists live and failed members.
func (e *Store) Members() []cluster.Member {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []cluster.Member
	for _, m := range e.members {
		out = append(out, cluster.Member{Name: m.Name, Addr: m.Addr, State: "alive"})
	}
	for name, f := range e.failed {
		if _, ok := e.members[name]; !ok {
			out = append(out, cluster.Member{Name: name, Addr: f.Addr, State: "failed", LastContact: f.Since})
		}
	}
	slices.SortFunc(out, func(x, y cluster.Member) int { return cmp.Compare(x.Name, y.Name) })
	return out
}
