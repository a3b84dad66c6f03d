package trace

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func ipv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	b[0], b[9] = 0x45, proto
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	copy(b[12:], src.AsSlice())
	copy(b[16:], dst.AsSlice())
	copy(b[20:], payload)
	return b
}

func eth(etype uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	binary.BigEndian.PutUint16(b[12:], etype)
	return append(b, payload...)
}

func echo(typ byte, id, seq uint16) []byte {
	b := make([]byte, 8+56)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	return b
}

// vxlanUDP is a UDP datagram to port carrying inner in VXLAN with vni.
func vxlanUDP(port uint16, vni uint32, inner []byte) []byte {
	udp := make([]byte, 8+8)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	udp[8] = 0x08
	udp[12], udp[13], udp[14] = byte(vni>>16), byte(vni>>8), byte(vni)
	return append(udp, inner...)
}

func vxlan(outerSrc, outerDst netip.Addr, port uint16, vni uint32, inner []byte) []byte {
	return eth(0x0800, ipv4(outerSrc, outerDst, 17, vxlanUDP(port, vni, inner)))
}

func TestMatch(t *testing.T) {
	a, b := netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.1.0.9")
	o1, o2 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	p := Probe{Src: a, Dst: b, ID: 0x4242, Seq: 7}
	req := eth(0x0800, ipv4(a, b, 1, echo(8, 0x4242, 7)))
	rep := eth(0x0800, ipv4(b, a, 1, echo(0, 0x4242, 7)))
	tagged := append(append(append([]byte{}, req[:12]...), 0x81, 0x00, 0, 5), req[12:]...)
	for _, tc := range []struct {
		name  string
		frame []byte
		ok    bool
		want  Sighting
	}{
		{"request", req, true, Sighting{}},
		{"reply", rep, true, Sighting{Reply: true}},
		{"VLAN-tagged request", tagged, true, Sighting{}},
		{"other id", eth(0x0800, ipv4(a, b, 1, echo(8, 0x4243, 7))), false, Sighting{}},
		{"other seq", eth(0x0800, ipv4(a, b, 1, echo(8, 0x4242, 8))), false, Sighting{}},
		{"request the wrong way", eth(0x0800, ipv4(b, a, 1, echo(8, 0x4242, 7))), false, Sighting{}},
		{"encapsulated request", vxlan(o1, o2, 4789, 4097, req), true, Sighting{Encap: true, VNI: 4097, OuterSrc: o1, OuterDst: o2}},
		{"encapsulated reply", vxlan(o2, o1, 4789, 4097, rep), true, Sighting{Reply: true, Encap: true, VNI: 4097, OuterSrc: o2, OuterDst: o1}},
		{"other UDP port", vxlan(o1, o2, 8472, 4097, req), false, Sighting{}},
		{"VXLAN in VXLAN is not followed", vxlan(o1, o2, 4789, 1, vxlan(o1, o2, 4789, 2, req)), false, Sighting{}},
		{"ARP", eth(0x0806, make([]byte, 28)), false, Sighting{}},
		{"truncated", req[:30], false, Sighting{}},
		{"empty", nil, false, Sighting{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ok := Match(tc.frame, p, 4789)
			tc.want.Len = len(tc.frame)
			if ok != tc.ok || (ok && s != tc.want) {
				t.Fatalf("Match = %+v, %v; want %+v, %v", s, ok, tc.want, tc.ok)
			}
		})
	}
	// A WireGuard device shows IP packets without an Ethernet header.
	ipReq, ipRep := ipv4(a, b, 1, echo(8, 0x4242, 7)), ipv4(b, a, 1, echo(0, 0x4242, 7))
	if s, ok := MatchIP(ipReq, p); !ok || s.Reply || s.Len != len(ipReq) {
		t.Fatalf("MatchIP(request) = %+v, %v", s, ok)
	}
	if s, ok := MatchIP(ipRep, p); !ok || !s.Reply {
		t.Fatalf("MatchIP(reply) = %+v, %v", s, ok)
	}
	if _, ok := MatchIP(req, p); ok {
		t.Fatal("MatchIP took an Ethernet frame for an IP packet")
	}
}

func ipv6(src, dst netip.Addr, next byte, payload []byte) []byte {
	b := make([]byte, 40+len(payload))
	b[0], b[6] = 0x60, next
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	copy(b[8:], src.AsSlice())
	copy(b[24:], dst.AsSlice())
	copy(b[40:], payload)
	return b
}

// vxlan6 is vxlan over an IPv6 underlay.
func vxlan6(outerSrc, outerDst netip.Addr, port uint16, vni uint32, inner []byte) []byte {
	return eth(0x86dd, ipv6(outerSrc, outerDst, 17, vxlanUDP(port, vni, inner)))
}

// TestMatchIPv6: an IPv6 probe (ICMPv6 echo 128 and reply 129), bare, in
// VXLAN over IPv4 and over IPv6, and an IPv4 probe over an IPv6 underlay.
func TestMatchIPv6(t *testing.T) {
	a, b := netip.MustParseAddr("fd00:1::5"), netip.MustParseAddr("fd00:1::9")
	o1, o2 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	u1, u2 := netip.MustParseAddr("2001:2::1"), netip.MustParseAddr("2001:2::2")
	p := Probe{Src: a, Dst: b, ID: 0x4242, Seq: 7}
	req := eth(0x86dd, ipv6(a, b, 58, echo(128, 0x4242, 7)))
	rep := eth(0x86dd, ipv6(b, a, 58, echo(129, 0x4242, 7)))
	p4 := Probe{Src: netip.MustParseAddr("10.1.0.5"), Dst: netip.MustParseAddr("10.1.0.9"), ID: 1, Seq: 1}
	req4 := eth(0x0800, ipv4(p4.Src, p4.Dst, 1, echo(8, 1, 1)))
	for _, tc := range []struct {
		name  string
		frame []byte
		p     Probe
		ok    bool
		want  Sighting
	}{
		{"request", req, p, true, Sighting{}},
		{"reply", rep, p, true, Sighting{Reply: true}},
		{"other id", eth(0x86dd, ipv6(a, b, 58, echo(128, 0x4243, 7))), p, false, Sighting{}},
		{"request the wrong way", eth(0x86dd, ipv6(b, a, 58, echo(128, 0x4242, 7))), p, false, Sighting{}},
		{"neighbour solicitation", eth(0x86dd, ipv6(a, b, 58, echo(135, 0x4242, 7))), p, false, Sighting{}},
		{"in VXLAN over IPv4", vxlan(o1, o2, 4789, 4097, req), p, true, Sighting{Encap: true, VNI: 4097, OuterSrc: o1, OuterDst: o2}},
		{"in VXLAN over IPv6", vxlan6(u2, u1, 4789, 4097, rep), p, true, Sighting{Reply: true, Encap: true, VNI: 4097, OuterSrc: u2, OuterDst: u1}},
		{"IPv4 probe over IPv6", vxlan6(u1, u2, 4789, 7, req4), p4, true, Sighting{Encap: true, VNI: 7, OuterSrc: u1, OuterDst: u2}},
		{"other port over IPv6", vxlan6(u1, u2, 8472, 7, req4), p4, false, Sighting{}},
		{"truncated", req[:50], p, false, Sighting{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ok := Match(tc.frame, tc.p, 4789)
			tc.want.Len = len(tc.frame)
			if ok != tc.ok || (ok && s != tc.want) {
				t.Fatalf("Match = %+v %v, want %+v %v", s, ok, tc.want, tc.ok)
			}
		})
	}
	if s, ok := MatchIP(ipv6(a, b, 58, echo(128, 0x4242, 7)), p); !ok || s.Reply {
		t.Fatalf("MatchIP of an IPv6 request: %+v %v", s, ok)
	}
}
