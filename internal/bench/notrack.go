package bench

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// Notrack is vxnet with members' VXLAN out of connection tracking
// (--notrack, the default) against tracked, on the same two hosts: one
// stream's throughput, and the conntrack entries that ShortConns short
// connections between containers leave in host 1's table. The agents are
// restarted with the other setting inside every round.
type Notrack struct {
	Conns int `json:"conns"`
	// Gb/s, medians over rounds.
	OnGbps  float64 `json:"on_gbps"`
	OffGbps float64 `json:"off_gbps"`
	Ratio   float64 `json:"ratio"` // median of per-round on/off
	// Entries added to host 1's conntrack table by Conns connections
	// (medians over rounds).
	OnEntries  float64 `json:"on_entries"`
	OffEntries float64 `json:"off_entries"`
}

// ShortConns is how many short connections the notrack part makes per
// measurement.
const ShortConns = 1000

// PartNotrack measures Notrack.
const PartNotrack = "notrack"

func notrackPart(c Config) (*Notrack, error) {
	name := "bnt"
	cfg := labCfg(name, 2, c)
	cfg.NoHealth = true
	l, err := lab.Up(cfg)
	if err != nil {
		return nil, err
	}
	defer lab.Down(name)
	paths, err := labPaths(l)
	if err != nil {
		return nil, err
	}
	e := paths["vxnet"]
	h1 := l.Hosts[0]
	var on, off, onN, offN []float64
	for round := range max(1, c.Rounds) {
		for _, mode := range Rotate([]string{"on", "off"}, round) {
			if err := setNotrack(l, mode == "on"); err != nil {
				return nil, err
			}
			bps, err := c.throughput(e.srv, e.cli, e.dst, 5221, 1)
			if err != nil {
				return nil, fmt.Errorf("notrack %s: %w", mode, err)
			}
			before, err := conntrackCount(h1.Netns)
			if err != nil {
				return nil, err
			}
			if err := ShortConnections(e.srv, e.cli, e.dst, 5222, ShortConns); err != nil {
				return nil, fmt.Errorf("notrack %s: %w", mode, err)
			}
			after, err := conntrackCount(h1.Netns)
			if err != nil {
				return nil, err
			}
			n := float64(max(0, after-before))
			if mode == "on" {
				on, onN = append(on, bps/1e9), append(onN, n)
			} else {
				off, offN = append(off, bps/1e9), append(offN, n)
			}
			c.Log.Info("notrack", "round", round+1, "mode", mode, "gbps", fmt.Sprintf("%.2f", bps/1e9), "conntrack_entries", n)
		}
	}
	return &Notrack{Conns: ShortConns, OnGbps: Median(on), OffGbps: Median(off), Ratio: MedianRatio(on, off),
		OnEntries: Median(onN), OffEntries: Median(offN)}, nil
}

// setNotrack restarts the lab's agents with --notrack on or off and waits
// until vxnet's table on both hosts says so.
func setNotrack(l *lab.Lab, on bool) error {
	want := []string{"--notrack=false"}
	if on {
		want = nil
	}
	if strings.Join(l.AgentArgs, " ") == strings.Join(want, " ") && l.Hosts[0].PID != 0 {
		return nil
	}
	l.AgentArgs = want
	return restartAgents(l, l.Hosts, fmt.Sprintf("notrack %v", on), func(obs datapath.Observed) bool {
		return obs.Firewall != nil && obs.Firewall.Notrack == on
	})
}

// conntrackCount reads the number of entries in a namespace's conntrack
// table.
func conntrackCount(ns string) (int, error) {
	var n int
	err := nsutil.Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		n, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("conntrack count in %s: %w", ns, err)
	}
	return n, nil
}

// ShortConnections opens n connections one after another from clientNS to
// a listener in serverNS, each closed once the server's byte arrives.
func ShortConnections(serverNS, clientNS string, dst netip.Addr, port, n int) error {
	ln, err := listen(serverNS, netip.AddrPortFrom(dst, uint16(port)))
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{1})
			c.Close()
		}
	}()
	buf := make([]byte, 1)
	for i := range n {
		c, err := dial(clientNS, netip.AddrPortFrom(dst, uint16(port)))
		if err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(buf)
		c.Close()
		if err != nil {
			return fmt.Errorf("connection %d: %w", i+1, err)
		}
	}
	return nil
}
