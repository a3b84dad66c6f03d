package etcd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vxnet/vxnet/internal/cluster"
)

// Config configures the etcd backend: the same records as gossip, kept
// in an etcd cluster the user runs; a lease per member for liveness,
// watches for changes.
type Config struct {
	Name      string
	Addr      netip.Addr  // this member's VTEP address
	Endpoints []string    // etcd client URLs
	TLS       *tls.Config // nil: plain HTTP
	// Prefix of every key vxnet writes (default "/vxnet/").
	Prefix string
	// TTL of the member's lease: a member that stops renewing it is gone
	// after this long (default 5 s).
	TTL      time.Duration
	OnChange func()
	OnCall   func(op string, body json.RawMessage) (any, error)
	Log      *slog.Logger
	// DialTimeout bounds the first connection (default 5 s).
	DialTimeout time.Duration
}

// Store replicates a State through etcd.
type Store struct {
	cfg    Config
	state  *cluster.State
	cli    *clientv3.Client
	log    *slog.Logger
	lease  clientv3.LeaseID
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	members map[string]member // live members by name
	failed  map[string]member // gone, with the time in since
	calls   cluster.Calls
	// pending holds records not yet written (etcd unreachable), by key.
	pending map[string]cluster.Record

	malformed atomic.Int64
	traffic   struct{ inMsgs, inBytes, outMsgs, outBytes atomic.Int64 }
}

// member is the value of a member key.
type member struct {
	Name  string     `json:"name"`
	Addr  netip.Addr `json:"addr"`
	Since time.Time  `json:"since"`
}

// grace keeps the endpoints of a member whose lease expired this long
// (as gossip keeps a failed member's for two probe intervals).
const grace = 2 * time.Second

func (e *Store) key(parts ...string) string { return e.cfg.Prefix + strings.Join(parts, "/") }

// Start connects, registers this member under a lease (refusing a name
// a live member holds at another address), loads the records and watches
// them.
func Start(cfg Config, state *cluster.State) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints: want --store etcd://HOST:PORT[,HOST:PORT...]")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/vxnet/"
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, TLS: cfg.TLS,
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("etcd store %v: %w", cfg.Endpoints, err)
	}
	e := &Store{cfg: cfg, state: state, cli: cli, log: cfg.Log, members: map[string]member{},
		failed: map[string]member{}, pending: map[string]cluster.Record{}}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			e.cancel()
			cli.Close()
		}
	}()
	if err := e.register(); err != nil {
		return nil, err
	}
	rev, err := e.load()
	if err != nil {
		return nil, err
	}
	// The members too before the first reconcile pass: without them it
	// would withdraw every peer's endpoints (a restart must change nothing).
	live, mrev, err := e.loadMembers()
	if err != nil {
		return nil, err
	}
	e.setMembers(live)
	e.wg.Add(3)
	go e.watchRecords(rev)
	go e.watchMembers(live, mrev)
	go e.retryPending()
	ok = true
	return e, nil
}

// register takes the member key under a new lease and keeps it alive.
func (e *Store) register() error {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.DialTimeout+e.cfg.TTL+2*time.Second)
	defer cancel()
	key := e.key("members", e.cfg.Name)
	// The name held at another address: this host before an address
	// change (its lease runs out within the TTL) or another live agent.
	for deadline := time.Now().Add(e.cfg.TTL + time.Second); ; {
		r, err := e.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("etcd store %v: %w%s", e.cfg.Endpoints, err, diagnose(e.cfg.Endpoints, e.cfg.TLS))
		}
		var m member
		if len(r.Kvs) == 0 || json.Unmarshal(r.Kvs[0].Value, &m) != nil || m.Addr == e.cfg.Addr {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: a live member at %s holds %q in etcd (this agent advertises %s): give each host its own --name", cluster.ErrNameInUse, m.Addr, e.cfg.Name, e.cfg.Addr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	l, err := e.cli.Grant(ctx, int64((e.cfg.TTL+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("etcd lease: %w", err)
	}
	b, _ := json.Marshal(member{Name: e.cfg.Name, Addr: e.cfg.Addr, Since: time.Now()})
	if _, err := e.cli.Put(ctx, key, string(b), clientv3.WithLease(l.ID)); err != nil {
		return fmt.Errorf("etcd register %s: %w", key, err)
	}
	ka, err := e.cli.KeepAlive(e.ctx, l.ID)
	if err != nil {
		return fmt.Errorf("etcd lease keep-alive: %w", err)
	}
	e.mu.Lock()
	e.lease = l.ID
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for range ka {
		}
		// The keep-alive ended: etcd unreachable too long, or the lease
		// expired. Register again when etcd answers (unless stopping).
		for e.ctx.Err() == nil {
			e.log.Warn("etcd lease lost; registering again")
			err := e.register()
			if err == nil {
				e.republish()
				return
			}
			e.log.Warn("etcd register", "err", err)
			select {
			case <-e.ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return nil
}

// fetch reads every record from etcd, and the revision it was read at.
func (e *Store) fetch() ([]cluster.Record, int64, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	r, err := e.cli.Get(ctx, e.key("records")+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd load records: %w", err)
	}
	var recs []cluster.Record
	for _, kv := range r.Kvs {
		if rec, ok := e.decode(kv.Value); ok {
			recs = append(recs, rec)
		}
	}
	return recs, r.Header.Revision, nil
}

// load reads every record, merges it, writes this member's newer ones
// back, and returns the revision to watch from.
func (e *Store) load() (int64, error) {
	recs, rev, err := e.fetch()
	if err != nil {
		return 0, err
	}
	if changed, _ := e.state.Merge(recs); slices.ContainsFunc(changed, cluster.AffectsKernel) {
		e.cfg.OnChange()
	}
	e.publishNewer(recs)
	return rev, nil
}

// republish writes the records this member holds newer than etcd (after
// its lease was lost: changes made while etcd was unreachable).
func (e *Store) republish() {
	if recs, _, err := e.fetch(); err == nil {
		e.publishNewer(recs)
	}
}

// publishNewer writes the records of this member's state that etcd, as
// read in have, lacks or holds older (its own after etcd lost them).
func (e *Store) publishNewer(have []cluster.Record) {
	by := make(map[string]cluster.Record, len(have))
	for _, r := range have {
		by[r.Key] = r
	}
	var out []cluster.Record
	for _, r := range e.state.Snapshot() {
		if cur, ok := by[r.Key]; !ok || r.Newer(cur) {
			out = append(out, r)
		}
	}
	e.Publish(out...)
}

func (e *Store) decode(b []byte) (cluster.Record, bool) {
	e.traffic.inMsgs.Add(1)
	e.traffic.inBytes.Add(int64(len(b)))
	var r cluster.Record
	if err := json.Unmarshal(b, &r); err != nil {
		e.malformed.Add(1)
		e.log.Warn("refused malformed record from etcd", "err", err)
		return r, false
	}
	if err := cluster.ValidateRecord(r); err != nil {
		e.malformed.Add(1)
		e.log.Warn("refused invalid record from etcd", "err", err)
		return r, false
	}
	return r, true
}

// Publish writes changed records to etcd; a record older than the one
// etcd holds is not written (last writer wins, as in gossip, decided by
// the same version and origin). A record etcd did not take (unreachable,
// no leader) is kept and written again until it is.
func (e *Store) Publish(recs ...cluster.Record) {
	for _, r := range recs {
		if err := e.put(r); err != nil {
			e.log.Warn("etcd publish; will retry", "key", r.Key, "err", err)
			e.mu.Lock()
			if cur, ok := e.pending[r.Key]; !ok || r.Newer(cur) {
				e.pending[r.Key] = r
			}
			e.mu.Unlock()
		}
	}
}

// retryPending writes the records etcd did not take, every half second.
func (e *Store) retryPending() {
	defer e.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		e.mu.Lock()
		todo := make([]cluster.Record, 0, len(e.pending))
		for _, r := range e.pending {
			todo = append(todo, r)
		}
		e.mu.Unlock()
		for _, r := range todo {
			if err := e.put(r); err != nil {
				break // still unreachable: next tick
			}
			e.mu.Lock()
			if cur, ok := e.pending[r.Key]; ok && !cur.Newer(r) {
				delete(e.pending, r.Key)
			}
			e.mu.Unlock()
			e.log.Info("etcd took a record it had refused", "key", r.Key)
		}
	}
}

// Pending counts the records waiting to be written to etcd.
func (e *Store) Pending() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending)
}

// Claim writes rec only if no other member holds its key (a tombstone or
// this member's own older record may be replaced): address blocks are
// claimed with etcd's consistency, never twice. When another member holds
// it, Claim returns false and that member's record.
func (e *Store) Claim(rec cluster.Record) (bool, cluster.Record, error) {
	b, err := rec.MarshalJSON()
	if err != nil {
		return false, cluster.Record{}, err
	}
	key := e.key("records", rec.Key)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	for attempt := 0; attempt < 5; attempt++ {
		t, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(b))).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			if retryable(ctx, err) {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			return false, cluster.Record{}, fmt.Errorf("claim %s in etcd: %w", rec.Key, err)
		}
		if t.Succeeded {
			return true, rec, nil
		}
		kvs := t.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 {
			continue // deleted meanwhile
		}
		cur, ok := e.decode(kvs[0].Value)
		if !ok {
			return false, cluster.Record{}, fmt.Errorf("claim %s: etcd holds a record this agent refuses", rec.Key)
		}
		if !cur.Deleted && cur.Origin != e.cfg.Name {
			return false, cur, nil
		}
		if !rec.Newer(cur) {
			return false, cur, nil // the caller merges it and claims again, newer
		}
		t, err = e.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)).
			Then(clientv3.OpPut(key, string(b))).Commit()
		if err == nil && t.Succeeded {
			return true, rec, nil
		}
	}
	return false, cluster.Record{}, fmt.Errorf("claim %s in etcd: no answer after five tries", rec.Key)
}

// retryable reports whether a failed etcd call may be tried again before
// ctx ends (unavailable, no leader: another endpoint or a new leader will
// answer).
func retryable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, context.Canceled)
}

func (e *Store) put(r cluster.Record) error {
	b, err := r.MarshalJSON()
	if err != nil {
		return err
	}
	key := e.key("records", r.Key)
	// Bounded: the caller (an attach) waits; what is not written by then
	// is retried in the background.
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
	defer cancel()
	// One transaction: write if the key is as last seen (at first: absent,
	// the common case of a new endpoint), else read it; a record older
	// than etcd's is not written.
	cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	for attempt := 0; attempt < 20; attempt++ {
		e.traffic.outMsgs.Add(1)
		e.traffic.outBytes.Add(int64(len(b)))
		t, err := e.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(b))).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			if retryable(ctx, err) {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			return err
		}
		if t.Succeeded {
			return nil
		}
		kvs := t.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
			continue
		}
		if old, ok := e.decode(kvs[0].Value); ok && !r.Newer(old) {
			return nil
		}
		cmp = clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)
	}
	return fmt.Errorf("record %s: not written after 20 tries", r.Key)
}

func (e *Store) watchRecords(rev int64) {
	defer e.wg.Done()
	prefix := e.key("records") + "/"
	for e.ctx.Err() == nil {
		wc := e.cli.Watch(clientv3.WithRequireLeader(e.ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wc {
			if resp.CompactRevision > 0 {
				// Missed events compacted away: load everything again.
				if r, err := e.load(); err == nil {
					rev = r
				}
				break
			}
			if err := resp.Err(); err != nil {
				e.log.Warn("etcd watch records", "err", err)
				break
			}
			var recs []cluster.Record
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					if r, ok := e.decode(ev.Kv.Value); ok {
						recs = append(recs, r)
					}
				}
			}
			rev = resp.Header.Revision
			if changed, _ := e.state.Merge(recs); slices.ContainsFunc(changed, cluster.AffectsKernel) {
				e.cfg.OnChange()
			}
		}
		if e.ctx.Err() == nil {
			// The watch broke (no leader, etcd unreachable): catch up on
			// what changed meanwhile, then watch again.
			time.Sleep(500 * time.Millisecond)
			if r, err := e.load(); err == nil {
				rev = r
			}
		}
	}
}

// MalformedMessages counts records refused from etcd.
func (e *Store) MalformedMessages() int64 { return e.malformed.Load() }

// Traffic counts records read from and written to etcd.
func (e *Store) Traffic() cluster.Traffic {
	return cluster.Traffic{InMessages: e.traffic.inMsgs.Load(), InBytes: e.traffic.inBytes.Load(), OutMessages: e.traffic.outMsgs.Load(), OutBytes: e.traffic.outBytes.Load()}
}

// Shutdown stops without giving up the lease: others keep this member's
// endpoints until it expires (a restart within the TTL changes nothing).
func (e *Store) Shutdown() error {
	e.cancel()
	err := e.cli.Close()
	e.wg.Wait()
	return err
}

// diagnose says why the first etcd endpoint does not answer, when a plain
// connection shows it (gRPC reports only a deadline): unreachable, or the
// TLS handshake refused (no client certificate, unknown CA).
func diagnose(endpoints []string, tc *tls.Config) string {
	if len(endpoints) == 0 {
		return ""
	}
	u, err := url.Parse(endpoints[0])
	if err != nil {
		return ""
	}
	c, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
	if err != nil {
		return fmt.Sprintf(" (%s: %v)", u.Host, err)
	}
	defer c.Close()
	if tc == nil {
		return fmt.Sprintf(" (%s accepts connections: is it etcd, and does it want TLS? give --etcd-cacert)", u.Host)
	}
	tc = tc.Clone()
	if tc.ServerName == "" {
		tc.ServerName = u.Hostname()
	}
	t := tls.Client(c, tc)
	_ = t.SetDeadline(time.Now().Add(2 * time.Second))
	if err := t.Handshake(); err != nil {
		return fmt.Sprintf(" (TLS to %s: %v%s)", u.Host, err, certHint(tc))
	}
	// With TLS 1.3 a refused client certificate shows on the first read.
	if _, err := t.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Sprintf(" (TLS to %s: %v%s)", u.Host, err, certHint(tc))
	}
	return ""
}

func certHint(tc *tls.Config) string {
	if len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
		return "; no client certificate given: --etcd-cert and --etcd-key"
	}
	return ""
}
