package icmp

import "testing"

func TestEchoReply(t *testing.T) {
	pkt := make([]byte, 20+8)
	pkt[0] = 0x45
	pkt[20] = 0 // echo reply
	pkt[24], pkt[25] = 0x12, 0x34
	pkt[26], pkt[27] = 0, 7
	if seq, ok := echoReply(pkt, 0x1234); !ok || seq != 7 {
		t.Fatalf("echoReply = %d, %v", seq, ok)
	}
	if _, ok := echoReply(pkt, 0x1235); ok {
		t.Fatal("another id matched")
	}
	pkt[20] = 8
	if _, ok := echoReply(pkt, 0x1234); ok {
		t.Fatal("an echo request matched")
	}
	if _, ok := echoReply(pkt[:10], 0x1234); ok {
		t.Fatal("a short packet matched")
	}
}
