package cluster

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

func BenchmarkDecodeState5000(b *testing.B) {
	s := NewState("h1")
	for i := 0; i < 5000; i++ {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		_, _ = s.Put(EndpointKey(fmt.Sprintf("h1.web.%d", i)), model.Endpoint{ID: fmt.Sprintf("h1.web.%d", i), Network: "web", Node: "h1", MAC: "02:00:00:00:00:01", IP: ip})
	}
	msg, _ := Encode(Message{Kind: MsgState, Records: s.Snapshot()})
	b.ResetTimer()
	for range b.N {
		if _, err := DecodeMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeState5000(b *testing.B) {
	s := NewState("h1")
	for i := 0; i < 5000; i++ {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		_, _ = s.Put(EndpointKey(fmt.Sprintf("h1.web.%d", i)), model.Endpoint{ID: fmt.Sprintf("h1.web.%d", i), Network: "web", Node: "h1", MAC: "02:00:00:00:00:01", IP: ip})
	}
	recs := s.Snapshot()
	b.ResetTimer()
	for range b.N {
		if _, err := Encode(Message{Kind: MsgState, Records: recs}); err != nil {
			b.Fatal(err)
		}
	}
}
