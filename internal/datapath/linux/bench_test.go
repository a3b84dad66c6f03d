package linux_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
	"github.com/vxnet/vxnet/internal/testutil"
)

// manyEndpoints is a host's input with n remote endpoints of one network
// spread over 32 other nodes.
func manyEndpoints(n int) reconcile.Input {
	in := reconcile.Input{Node: "h0", Local: netip.MustParseAddr("198.18.1.100"), Port: 4789, UnderlayMTU: 1500}
	for i := 0; i <= 32; i++ {
		in.Nodes = append(in.Nodes, model.Node{Name: fmt.Sprintf("h%d", i), Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(100 + i)})})
	}
	nw := model.Network{Name: "big", VNI: 9000, Subnet: netip.MustParsePrefix("10.128.0.0/16")}
	nw.Normalize()
	in.Networks = []model.Network{nw}
	a := netip.MustParseAddr("10.128.1.0")
	for i := 0; i < n; i++ {
		in.Endpoints = append(in.Endpoints, model.Endpoint{ID: fmt.Sprintf("e%d", i), Network: "big", Node: fmt.Sprintf("h%d", 1+i%32),
			MAC: fmt.Sprintf("02:7e:00:00:%02x:%02x", i>>8, i&0xff), IP: a})
		a = a.Next()
	}
	return in
}

// BenchmarkProgram5000 programs 5,000 remote endpoints (10,000 kernel
// entries) into a fresh namespace in one pass. Needs root.
//
//	go test -run XXX -bench Program5000 ./internal/datapath/linux/
func BenchmarkProgram5000(b *testing.B) {
	want, conflicts := reconcile.Desired(manyEndpoints(5000))
	if len(conflicts) > 0 {
		b.Fatal(conflicts)
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		_, path := testutil.Netns(b)
		dp, err := linux.Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		ops, err := reconcile.Sync(dp, want)
		if err != nil || len(ops) < 10000 {
			b.Fatalf("%d ops, %v", len(ops), err)
		}
		b.StopTimer()
		dp.Close()
		b.StartTimer()
	}
}

// BenchmarkNoopPass is a pass over programmed remote endpoints (32, as
// in a small cluster, and 5,000) that finds nothing to change: the
// steady-state cost, paid by every agent on every change. Needs root.
//
//	go test -run XXX -bench NoopPass ./internal/datapath/linux/
//
// The bpf cases add the fast path (a map entry per remote endpoint, the
// program on the vxlan device), which a pass reads too.
func BenchmarkNoopPass(b *testing.B) {
	for _, c := range []struct {
		n            int
		fast, reread bool
	}{{32, false, false}, {5000, false, false}, {32, true, false}, {5000, true, false}, {32, true, true}, {5000, true, true}} {
		name := fmt.Sprint(c.n)
		if c.fast {
			name += "/bpf"
		}
		if c.reread {
			name += "/reread" // the programs and maps read on every pass
		}
		b.Run(name, func(b *testing.B) {
			in := manyEndpoints(c.n)
			in.FastPath = c.fast
			_, path := testutil.Netns(b)
			dp, err := linux.Open(path, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer dp.Close()
			if c.fast {
				if err := dp.EnableFastPath(); err != nil {
					b.Fatal(err)
				}
			}
			if c.reread {
				dp.SetFastPathMaxAge(0)
			}
			want, _ := reconcile.Desired(in)
			if _, err := reconcile.Sync(dp, want); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				want, _ := reconcile.Desired(in)
				ops, err := reconcile.Sync(dp, want)
				if err != nil || len(ops) != 0 {
					b.Fatalf("%d ops, %v", len(ops), err)
				}
			}
		})
	}
}
