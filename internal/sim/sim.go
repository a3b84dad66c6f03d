// Package sim runs many cluster members in one process, over memberlist's
// in-memory transport, each with vxnet's real gossip and cluster state
// code and no datapath, and measures what the replication costs as the
// cluster grows: cold start, how long one change takes to reach every
// member, traffic per member, false deaths and memory per member.
package sim

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxnet/vxnet/internal/cluster"
	"github.com/vxnet/vxnet/internal/cluster/gossip"
	"github.com/vxnet/vxnet/internal/cluster/gossip/memnet"
	"github.com/vxnet/vxnet/internal/model"
)

// Config is one simulation.
type Config struct {
	Members int
	// ProbeInterval of the members' failure detection (default 1 s).
	ProbeInterval time.Duration
	// Window is how long steady-state traffic is measured (default 10 s).
	Window time.Duration
	// Timeout bounds the cold start and the spread of the change (default 2 min).
	Timeout time.Duration
	Log     *slog.Logger
}

// Result is what one simulation measured.
type Result struct {
	Members int `json:"members"`
	// ColdStart is from the first join to every member knowing every other.
	ColdStartMs float64 `json:"cold_start_ms"`
	// Converge* is from the publish of one endpoint record on one member to
	// its arrival at the others (percentiles over members).
	ConvergeP50Ms float64 `json:"converge_p50_ms"`
	ConvergeP99Ms float64 `json:"converge_p99_ms"`
	ConvergeMaxMs float64 `json:"converge_max_ms"`
	// Steady-state traffic of all kinds (memberlist's probes and gossip,
	// vxnet's records and state exchanges) per member.
	BytesPerMemberSec float64 `json:"bytes_per_member_per_s"`
	MsgsPerMemberSec  float64 `json:"msgs_per_member_per_s"`
	// FalseDeaths counts (observer, member) pairs where a live member was
	// seen failed at the end of the window.
	FalseDeaths int     `json:"false_deaths"`
	HeapKBPer   float64 `json:"heap_kb_per_member"`
	// Dropped counts packets lost to full receive queues (as UDP loses
	// them to full socket buffers) during the window.
	Dropped int64 `json:"dropped_packets"`
}

type member struct {
	name   string
	addr   string
	state  *cluster.State
	gossip *gossip.Gossip
	got    atomic.Int64 // unix nanos the watched record arrived (0: not yet)
}

// Run runs one simulation and tears it down.
func Run(cfg Config) (Result, error) {
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.Window == 0 {
		cfg.Window = 10 * time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Members < 2 {
		return Result{}, fmt.Errorf("invalid member count %d: want at least 2", cfg.Members)
	}
	res := Result{Members: cfg.Members}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	network := &memnet.Network{}
	watch := cluster.EndpointKey("sim.web.1")
	ms := make([]*member, cfg.Members)
	defer func() {
		for _, m := range ms {
			if m != nil && m.gossip != nil {
				_ = m.gossip.Shutdown()
			}
		}
	}()
	// Every transport first: the mock network's maps are not safe to add
	// to while members already send.
	trs := make([]*memnet.Transport, len(ms))
	for i := range trs {
		trs[i] = network.NewTransport()
	}
	for i := range ms {
		m := &member{name: fmt.Sprintf("m%04d", i)}
		m.state = cluster.NewState(m.name)
		tr := trs[i]
		ip, port, _ := tr.FinalAdvertiseAddr("", 0)
		m.addr = net.JoinHostPort(ip.String(), fmt.Sprint(port))
		st := m.state
		var err error
		m.gossip, err = gossip.Start(gossip.Config{Name: m.name, Addr: netip.MustParseAddr("127.0.0.1"), Port: port,
			Insecure: true, ProbeInterval: cfg.ProbeInterval, Transport: tr,
			Log: cfg.Log.With("member", m.name),
			OnChange: func() {
				if m.got.Load() == 0 {
					if _, ok := st.Get(watch); ok {
						m.got.Store(time.Now().UnixNano())
					}
				}
			}}, m.state)
		if err != nil {
			return res, fmt.Errorf("start member %s: %w", m.name, err)
		}
		ms[i] = m
	}

	// Cold start: everyone joins through up to three members already in,
	// eight joins at a time.
	start := time.Now()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var joinErr atomic.Value
	for i := 1; i < len(ms); i++ {
		seeds := []string{ms[0].addr}
		for range 2 {
			seeds = append(seeds, ms[rand.N(i)].addr)
		}
		slices.Sort(seeds)
		seeds = slices.Compact(seeds)
		wg.Add(1)
		sem <- struct{}{}
		go func(m *member) {
			defer func() { <-sem; wg.Done() }()
			for attempt := 0; ; attempt++ {
				if _, err := m.gossip.Join(seeds); err == nil {
					return
				} else if attempt == 5 {
					joinErr.Store(fmt.Errorf("%s could not join: %w", m.name, err))
					return
				}
				time.Sleep(time.Duration(100<<attempt) * time.Millisecond)
			}
		}(ms[i])
	}
	wg.Wait()
	if err, ok := joinErr.Load().(error); ok {
		return res, err
	}
	if err := waitAll(ms, cfg.Timeout, func(m *member) bool { return len(m.gossip.Alive()) == len(ms) }); err != nil {
		return res, fmt.Errorf("cold start: %w", err)
	}
	res.ColdStartMs = ms2(time.Since(start))

	// Steady state.
	time.Sleep(2 * cfg.ProbeInterval)
	network.Msgs.Store(0)
	network.Bytes.Store(0)
	time.Sleep(cfg.Window)
	n := float64(len(ms)) * cfg.Window.Seconds()
	res.BytesPerMemberSec, res.MsgsPerMemberSec = float64(network.Bytes.Load())/n, float64(network.Msgs.Load())/n
	res.Dropped = network.Dropped.Load()
	for _, m := range ms {
		for _, o := range m.gossip.Members() {
			if o.State == "failed" {
				res.FalseDeaths++
			}
		}
	}

	// One change, from one member, to all.
	origin := ms[rand.N(len(ms))]
	ep := model.Endpoint{ID: "sim.web.1", Network: "web", Node: origin.name, MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.1")}
	rec, err := origin.state.Put(watch, ep)
	if err != nil {
		return res, err
	}
	published := time.Now()
	origin.got.Store(published.UnixNano())
	origin.gossip.Publish(rec)
	if err := waitAll(ms, cfg.Timeout, func(m *member) bool { return m.got.Load() != 0 }); err != nil {
		return res, fmt.Errorf("spreading one change: %w", err)
	}
	var lat []time.Duration
	for _, m := range ms {
		if m != origin {
			lat = append(lat, time.Duration(m.got.Load()-published.UnixNano()))
		}
	}
	slices.Sort(lat)
	res.ConvergeP50Ms, res.ConvergeP99Ms, res.ConvergeMaxMs = ms2(pct(lat, 50)), ms2(pct(lat, 99)), ms2(lat[len(lat)-1])

	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	res.HeapKBPer = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / 1024 / float64(len(ms))
	return res, nil
}

func waitAll(ms []*member, timeout time.Duration, done func(*member) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		left := 0
		for _, m := range ms {
			if !done(m) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d members not there after %s", left, len(ms), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms2(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
