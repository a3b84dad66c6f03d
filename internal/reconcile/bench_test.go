package reconcile_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/vxnet/vxnet/internal/datapath/fake"
	"github.com/vxnet/vxnet/internal/model"
	"github.com/vxnet/vxnet/internal/reconcile"
)

// BenchmarkNoopPass measures one steady-state pass (desired, observe, plan:
// nothing to do) with 5,000 remote endpoints over 32 nodes.
func BenchmarkNoopPass(b *testing.B) {
	in := input()
	for i := 0; i < 32; i++ {
		in.Nodes = append(in.Nodes, model.Node{Name: fmt.Sprintf("n%d", i), Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(i)})})
	}
	big := model.Network{Name: "big", VNI: 9000, Subnet: netip.MustParsePrefix("10.128.0.0/16"), Gateway: netip.MustParseAddr("10.128.0.1")}
	in.Networks = append(in.Networks, big)
	a := netip.MustParseAddr("10.128.1.0")
	for i := 0; i < 5000; i++ {
		in.Endpoints = append(in.Endpoints, model.Endpoint{ID: fmt.Sprintf("e%d", i), Network: "big", Node: fmt.Sprintf("n%d", i%32),
			MAC: fmt.Sprintf("02:7e:00:00:%02x:%02x", i>>8, i&0xff), IP: a})
		a = a.Next()
	}
	dp := fake.New()
	want, _ := reconcile.Desired(in)
	if _, err := reconcile.Sync(dp, want); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want, _ := reconcile.Desired(in)
		ops, err := reconcile.Sync(dp, want)
		if err != nil || len(ops) != 0 {
			b.Fatalf("ops %d err %v", len(ops), err)
		}
	}
}
