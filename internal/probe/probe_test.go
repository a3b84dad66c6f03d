package probe

import (
	"golang.org/x/sys/unix"

	"encoding/binary"
	"net/netip"
	"testing"
)

func TestChecksum(t *testing.T) {
	// An echo request with its checksum filled in sums to zero.
	p := EchoRequest(0x1234, 1, 33)
	if Checksum(p) != 0 {
		t.Fatalf("checksum of a checksummed packet = %#x, want 0", Checksum(p))
	}
	if len(p) != 41 || p[0] != 8 || binary.BigEndian.Uint16(p[4:]) != 0x1234 {
		t.Fatalf("echo request header wrong: % x", p[:8])
	}
}

func ipv4(src [4]byte, proto byte, payload []byte) []byte {
	h := make([]byte, 20)
	h[0], h[9] = 0x45, proto
	copy(h[12:], src[:])
	return append(h, payload...)
}

func TestClassifyReply(t *testing.T) {
	dst := netip.MustParseAddr("10.0.0.2")
	reply := EchoRequest(7, 1, 8)
	reply[0] = 0
	if k := classifyReply(ipv4(dst.As4(), 1, reply), dst, 7, 1); k != replyOK {
		t.Fatalf("echo reply: %v", k)
	}
	if k := classifyReply(ipv4([4]byte{10, 0, 0, 9}, 1, reply), dst, 7, 1); k != replyOther {
		t.Fatal("reply from another address accepted")
	}
	if k := classifyReply(ipv4(dst.As4(), 1, reply), dst, 8, 1); k != replyOther {
		t.Fatal("reply with another id accepted")
	}
	// Fragmentation needed, quoting our request.
	quoted := ipv4([4]byte{10, 0, 0, 1}, 1, EchoRequest(7, 1, 0))
	tooBig := append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0xaa}, quoted...)
	if k := classifyReply(ipv4([4]byte{10, 0, 0, 254}, 1, tooBig), dst, 7, 1); k != replyTooBig {
		t.Fatalf("frag needed: %v", k)
	}
	if k := classifyReply([]byte{0x45, 0}, dst, 7, 1); k != replyOther {
		t.Fatal("truncated packet accepted")
	}
}

func TestClassifyFrame(t *testing.T) {
	payload := func(dport uint16, innerDst []byte, innerType uint16) []byte {
		udp := make([]byte, 8)
		binary.BigEndian.PutUint16(udp[2:], dport)
		vx := []byte{8, 0, 0, 0, 0, 0, 0x2a, 0} // VNI 42
		inner := make([]byte, 14+28)
		copy(inner, innerDst)
		binary.BigEndian.PutUint16(inner[12:], innerType)
		return append(append(udp, vx...), inner...)
	}
	frame := func(dport uint16, innerDst []byte, innerType uint16) []byte {
		eth := make([]byte, 14)
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		return append(eth, ipv4([4]byte{198, 18, 0, 1}, 17, payload(dport, innerDst, innerType))...)
	}
	// Over an IPv6 underlay: 2001:db8::1 -> 2001:db8::2.
	frame6 := func(dport uint16, innerDst []byte, innerType uint16) []byte {
		eth := make([]byte, 14)
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip := make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, 17, 64
		copy(ip[8:], netip.MustParseAddr("2001:db8::1").AsSlice())
		copy(ip[24:], netip.MustParseAddr("2001:db8::2").AsSlice())
		return append(append(eth, ip...), payload(dport, innerDst, innerType)...)
	}
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	uni := []byte{2, 0, 0, 0, 0, 1}
	for _, tc := range []struct {
		f               []byte
		vx, arp, bcastW bool
	}{
		{frame(4789, bcast, 0x0806), true, true, true},
		{frame(4789, uni, 0x0800), true, false, false},
		{frame(53, bcast, 0x0806), false, false, false},
		{frame6(4789, bcast, 0x0806), true, true, true},
		{frame6(4789, uni, 0x86dd), true, false, false},
		{frame6(53, uni, 0x0800), false, false, false},
		{[]byte{1, 2, 3}, false, false, false},
	} {
		vx, arp, b := ClassifyFrame(tc.f, 4789)
		if vx != tc.vx || arp != tc.arp || b != tc.bcastW {
			t.Errorf("ClassifyFrame = %v %v %v, want %v %v %v", vx, arp, b, tc.vx, tc.arp, tc.bcastW)
		}
		if p := vxlanPayload(tc.f, 4789); tc.vx && binary.BigEndian.Uint32(p[4:8])>>8 != 42 {
			t.Errorf("VNI of %x: want 42", p)
		}
	}
	// The outer addresses, of either family.
	for _, f := range [][]byte{frame(4789, uni, 0x0800), frame6(4789, uni, 0x0800)} {
		src, dst, udp, ok := outerIP(f)
		if !ok || udp == nil || !src.IsValid() || src.Is4() != (binary.BigEndian.Uint16(f[12:]) == 0x0800) || src == dst {
			t.Errorf("outerIP: %v %v udp %d bytes %v", src, dst, len(udp), ok)
		}
	}
}

func TestClassifyReply6(t *testing.T) {
	dst := netip.MustParseAddr("fd00:1::2")
	from := &unix.SockaddrInet6{Addr: dst.As16()}
	reply := EchoRequest(7, 1, 8)
	reply[0] = 129
	for _, tc := range []struct {
		name string
		p    []byte
		from unix.Sockaddr
		id   uint16
		want replyKind
	}{
		{"echo reply", reply, from, 7, replyOK},
		{"from another address", reply, &unix.SockaddrInet6{Addr: netip.MustParseAddr("fd00:1::9").As16()}, 7, replyOther},
		{"another id", reply, from, 8, replyOther},
		{"neighbour advertisement", []byte{136, 0, 0, 0, 0, 7, 0, 1}, from, 7, replyOther},
		{"packet too big, quoting ours", append(append([]byte{2, 0, 0, 0, 0, 0, 5, 0x28}, make([]byte, 40)...), 128, 0, 0, 0, 0, 7, 0, 1), from, 7, replyTooBig},
		{"truncated", []byte{129, 0}, from, 7, replyOther},
	} {
		if k := classifyReply6(tc.p, tc.from, dst, tc.id, 1); k != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, k, tc.want)
		}
	}
}

func TestInnerIPv6(t *testing.T) {
	frame := func(etherType uint16, next, icmpType byte) []byte {
		f := make([]byte, 14+40+8)
		f[12], f[13] = byte(etherType>>8), byte(etherType)
		f[14+6], f[14+40] = next, icmpType
		return f
	}
	for _, tc := range []struct {
		name   string
		f      []byte
		v6, nd bool
	}{
		{"neighbour solicitation", frame(0x86dd, 58, 135), true, true},
		{"neighbour advertisement", frame(0x86dd, 58, 136), true, true},
		{"echo request", frame(0x86dd, 58, 128), true, false},
		{"tcp", frame(0x86dd, 6, 135), true, false},
		{"ipv4", frame(0x0800, 1, 8), false, false},
		{"truncated", frame(0x86dd, 58, 135)[:20], false, false},
	} {
		if v6, nd := innerIPv6(tc.f); v6 != tc.v6 || nd != tc.nd {
			t.Errorf("%s: v6 %v nd %v, want %v %v", tc.name, v6, nd, tc.v6, tc.nd)
		}
	}
}

func TestEchoRequest6(t *testing.T) {
	b := EchoRequest6(7, 1, 8)
	if len(b) != 16 || b[0] != 128 || b[1] != 0 || b[2] != 0 || b[3] != 0 || b[5] != 7 || b[7] != 1 {
		t.Fatalf("EchoRequest6 = %x", b)
	}
}
