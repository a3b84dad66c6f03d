package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/model"
)

// Calls between members through etcd: a request is a key under the callee,
// the answer a key under the caller.

// Request calls op on member node through etcd: the request is a key under
// the callee's calls/ prefix, the answer one under the caller's replies/,
// both on a short lease.
func (e *Store) Request(node, op string, body any, timeout time.Duration) (json.RawMessage, error) {
	e.mu.Lock()
	_, live := e.members[node]
	e.mu.Unlock()
	if !live {
		return nil, fmt.Errorf("member %s is not reachable (not a live member)", node)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("%s request: %w", op, err)
	}
	id, ch, done := e.calls.Open(e.cfg.Name)
	defer done()
	msg, _ := json.Marshal(cluster.Call{ID: id, From: e.cfg.Name, Op: op, Body: b})
	if err := e.putShort(e.key("calls", node, id), msg, timeout); err != nil {
		return nil, fmt.Errorf("%s request to %s: %w", op, node, err)
	}
	return cluster.Wait(ch, op, node, timeout, "")
}

// putShort writes a value that lives a few seconds.
func (e *Store) putShort(key string, val []byte, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	l, err := e.cli.Grant(ctx, int64(max(timeout, 5*time.Second)/time.Second)+1)
	if err != nil {
		return err
	}
	_, err = e.cli.Put(ctx, key, string(val), clientv3.WithLease(l.ID))
	return err
}

func (e *Store) answer(b []byte) {
	var c cluster.Call
	if err := json.Unmarshal(b, &c); err != nil || model.ValidateName("node", c.From) != nil || c.ID == "" {
		e.malformed.Add(1)
		return
	}
	resp := cluster.Call{ID: c.ID, From: e.cfg.Name, Op: c.Op}
	if e.cfg.OnCall == nil {
		resp.Error = "this member answers no requests"
	} else if v, err := e.cfg.OnCall(c.Op, c.Body); err != nil {
		resp.Error = err.Error()
	} else if resp.Body, err = json.Marshal(v); err != nil {
		resp.Error = err.Error()
	}
	msg, _ := json.Marshal(resp)
	if err := e.putShort(e.key("replies", c.From, c.ID), msg, 10*time.Second); err != nil {
		e.log.Warn("etcd answer", "to", c.From, "op", c.Op, "err", err)
	}
}

func (e *Store) reply(b []byte) {
	var c cluster.Call
	if json.Unmarshal(b, &c) != nil {
		e.malformed.Add(1)
		return
	}
	e.calls.Deliver(&c)
}
