// Package trace follows one probe through the datapath: taps on the
// interfaces a frame crosses (container veth, bridge, vxlan device,
// underlay) report whether they saw the probe's echo request and reply,
// and how (VNI and outer addresses once encapsulated). Match is the pure
// part; Tap captures on one interface.
package trace

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Probe identifies a trace's echo request (Src to Dst) and its reply.
type Probe struct {
	Src, Dst netip.Addr
	ID, Seq  uint16
}

// Sighting is what a tap saw of the probe in one frame.
type Sighting struct {
	Reply bool `json:"reply"` // the echo reply (Dst to Src)
	// Encap: inside VXLAN, with its VNI and outer addresses.
	Encap    bool       `json:"encap"`
	VNI      uint32     `json:"vni,omitempty"`
	OuterSrc netip.Addr `json:"outerSrc,omitzero"`
	OuterDst netip.Addr `json:"outerDst,omitzero"`
	Len      int        `json:"len"` // frame length
}

// Seen is a sighting with the time since its tap started.
type Seen struct {
	Sighting
	After time.Duration `json:"after"`
}

// Match reports whether an Ethernet frame carries the probe, directly or
// inside VXLAN to vxlanPort.
func Match(frame []byte, p Probe, vxlanPort uint16) (Sighting, bool) {
	s, ok := matchEth(frame, p, vxlanPort, true)
	s.Len = len(frame)
	return s, ok
}

// MatchIP reports whether an IP packet with no link-layer header (as a
// WireGuard device shows it) carries the probe.
func MatchIP(packet []byte, p Probe) (Sighting, bool) {
	var s Sighting
	var ok bool
	if len(packet) > 0 && packet[0]>>4 == 6 {
		s, ok = matchIPv6(packet, p, 0, false)
	} else {
		s, ok = matchIPv4(packet, p, 0, false)
	}
	s.Len = len(packet)
	return s, ok
}

func matchEth(f []byte, p Probe, port uint16, outer bool) (Sighting, bool) {
	if len(f) < 14 {
		return Sighting{}, false
	}
	etype, off := binary.BigEndian.Uint16(f[12:]), 14
	if etype == 0x8100 && len(f) >= 18 { // one VLAN tag
		etype, off = binary.BigEndian.Uint16(f[16:]), 18
	}
	switch etype {
	case 0x0800:
		return matchIPv4(f[off:], p, port, outer)
	case 0x86dd:
		return matchIPv6(f[off:], p, port, outer)
	}
	return Sighting{}, false
}

func matchIPv4(b []byte, p Probe, port uint16, outer bool) (Sighting, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return Sighting{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl+8 {
		return Sighting{}, false
	}
	src, _ := netip.AddrFromSlice(b[12:16])
	dst, _ := netip.AddrFromSlice(b[16:20])
	l4 := b[ihl:]
	switch b[9] {
	case 1: // ICMP
		id, seq := binary.BigEndian.Uint16(l4[4:]), binary.BigEndian.Uint16(l4[6:])
		if id != p.ID || seq != p.Seq {
			return Sighting{}, false
		}
		switch {
		case l4[0] == 8 && src == p.Src && dst == p.Dst:
			return Sighting{}, true
		case l4[0] == 0 && src == p.Dst && dst == p.Src:
			return Sighting{Reply: true}, true
		}
	case 17: // UDP: VXLAN?
		return matchVXLAN(l4, p, port, outer, src, dst)
	}
	return Sighting{}, false
}

// matchIPv6 is matchIPv4 for IPv6 (no extension headers: neither the
// probe nor VXLAN has any): ICMPv6 echo 128 and reply 129.
func matchIPv6(b []byte, p Probe, port uint16, outer bool) (Sighting, bool) {
	if len(b) < 40+8 || b[0]>>4 != 6 {
		return Sighting{}, false
	}
	src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	l4 := b[40:]
	switch b[6] {
	case 58: // ICMPv6
		if binary.BigEndian.Uint16(l4[4:]) != p.ID || binary.BigEndian.Uint16(l4[6:]) != p.Seq {
			return Sighting{}, false
		}
		switch {
		case l4[0] == 128 && src == p.Src && dst == p.Dst:
			return Sighting{}, true
		case l4[0] == 129 && src == p.Dst && dst == p.Src:
			return Sighting{Reply: true}, true
		}
	case 17:
		return matchVXLAN(l4, p, port, outer, src, dst)
	}
	return Sighting{}, false
}

// matchVXLAN looks for the probe inside a UDP datagram l4 between the
// outer addresses src and dst (only on an outer frame: VXLAN in VXLAN is
// not followed).
func matchVXLAN(l4 []byte, p Probe, port uint16, outer bool, src, dst netip.Addr) (Sighting, bool) {
	if !outer || binary.BigEndian.Uint16(l4[2:]) != port || len(l4) < 8+8 {
		return Sighting{}, false
	}
	vx := l4[8:]
	if vx[0]&0x08 == 0 {
		return Sighting{}, false
	}
	s, ok := matchEth(vx[8:], p, port, false)
	if !ok {
		return Sighting{}, false
	}
	s.Encap, s.VNI, s.OuterSrc, s.OuterDst = true, uint32(vx[4])<<16|uint32(vx[5])<<8|uint32(vx[6]), src, dst
	return s, true
}
