package lab

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vxnet/vxnet/internal/probe"
)

// Cell is one reachability probe from a container to another.
type Cell struct {
	From, To string
	Expected bool // same network
	Reached  bool
	RTT      time.Duration
	Err      string
}

// OK reports whether the probe matched the expectation.
func (c Cell) OK() bool { return c.Expected == c.Reached }

// NeighbourBudget returns how many dynamic neighbour (ARP) entries the
// kernel keeps in all namespaces together before it refuses new ones
// (net.ipv4.neigh.default.gc_thresh3): every lab host and container shares
// this one table, so a full matrix of N containers needs about N*N entries.
// On real hosts each kernel has its own table.
func NeighbourBudget() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// MatrixFits reports whether a full matrix fits the neighbour budget.
func (l *Lab) MatrixFits() (need, budget int, ok bool) {
	n := len(l.Containers)
	need = n*(n-1) + len(l.Hosts)*(len(l.Hosts)-1)
	budget = NeighbourBudget()
	return need, budget, budget == 0 || need <= budget
}

// Matrix pings every container from every other one, in parallel.
func (l *Lab) Matrix(timeout time.Duration) [][]Cell {
	n := len(l.Containers)
	m := make([][]Cell, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, a := range l.Containers {
		m[i] = make([]Cell, n)
		for j, b := range l.Containers {
			m[i][j] = Cell{From: a.Name, To: b.Name, Expected: a.Network == b.Network}
			if i == j {
				m[i][j].Reached = true
				continue
			}
			wg.Add(1)
			go func(c *Cell, ns string, dst Container, v6 bool) {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				c.Reached, c.RTT, c.Err = reach(ns, dst.IP, timeout, c.Expected)
				if !v6 {
					return
				}
				// Dual stack: expected means both families answer; a
				// leak in either is a leak.
				r6, _, err6 := reach(ns, dst.IP6, timeout, c.Expected)
				if c.Expected {
					c.Reached = c.Reached && r6
				} else {
					c.Reached = c.Reached || r6
				}
				if err6 != "" && c.Expected {
					c.Err = strings.TrimPrefix(c.Err+"; "+err6, "; ")
				}
			}(&m[i][j], a.Netns, b, a.IP6.IsValid() && b.IP6.IsValid())
		}
	}
	wg.Wait()
	return m
}

// reach pings dst from the namespace ns: twice when it is expected to
// answer (the very first packet of a flow may race an entry being
// programmed on a busy machine), once when it is not.
func reach(ns string, dst netip.Addr, timeout time.Duration, expected bool) (bool, time.Duration, string) {
	var msg string
	for try := 0; try < 2; try++ {
		r, err := probe.Ping(ns, dst, 56, false, timeout)
		if err == nil {
			return true, r.RTT, ""
		}
		msg = err.Error()
		if !expected {
			break
		}
	}
	return false, 0, msg
}

// MatrixOK reports whether every probe matched its expectation.
func MatrixOK(m [][]Cell) bool {
	for _, row := range m {
		for _, c := range row {
			if !c.OK() {
				return false
			}
		}
	}
	return true
}

// PrintMatrix writes the matrix as a table: "ok" reached as expected, "--"
// blocked as expected (another network), "FAIL"/"LEAK" otherwise.
func (l *Lab) PrintMatrix(w io.Writer, m [][]Cell) {
	width := 6
	for _, c := range l.Containers {
		if len(c.Name) > width {
			width = len(c.Name)
		}
	}
	fmt.Fprintf(w, "%-*s", width+2, "from \\ to")
	for _, c := range l.Containers {
		fmt.Fprintf(w, " %*s", width, c.Name)
	}
	fmt.Fprintln(w)
	for i, row := range m {
		c := l.Containers[i]
		fmt.Fprintf(w, "%-*s", width+2, c.Name)
		for j, cell := range row {
			s := "--"
			switch {
			case i == j:
				s = "."
			case cell.Expected && cell.Reached:
				s = "ok"
			case cell.Expected:
				s = "FAIL"
			case cell.Reached:
				s = "LEAK"
			}
			fmt.Fprintf(w, " %*s", width, s)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, strings.Repeat("-", (width+1)*(len(l.Containers)+1)+1))
	var want, got, bad int
	for _, row := range m {
		for _, cell := range row {
			if cell.From == cell.To {
				continue
			}
			if cell.Expected {
				want++
				if cell.Reached {
					got++
				}
			}
			if !cell.OK() {
				bad++
			}
		}
	}
	if slices.ContainsFunc(l.Containers, func(c Container) bool { return c.IP6.IsValid() }) {
		fmt.Fprintf(w, "ok = reached by IPv4 and by IPv6 (same network), -- = isolated in both (other network)\n")
	} else {
		fmt.Fprintf(w, "ok = reached (same network), -- = isolated (other network)\n")
	}
	fmt.Fprintf(w, "same-network pairs reached: %d/%d; unexpected results: %d\n", got, want, bad)
}
