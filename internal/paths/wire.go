package paths

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// A probe and its answer travel on the gossip port, beside memberlist's
// packets, which never start with Magic. Both are authenticated with the
// cluster key (HMAC-SHA256, truncated to 16 bytes): a host without the key
// can neither make a host answer nor steer its choice with a forged
// answer. The answer says where the probe came from as the answering host
// saw it (behind a NAT: the NAT's public address).
//
//	magic(1) version(1) kind(1) nonce(8) at(8) from(1+n) to(1+n)
//	addr(1+4|16) [answer: seenAs(1+4|16) seenPort(2)] mac(16)
//
// At (Unix milliseconds) lets a receiver refuse a probe replayed later
// from elsewhere (Fresh).

// Magic is the first byte of a path message.
const Magic = 0xf5

const (
	version    = 1
	kindProbe  = 1
	kindAnswer = 2
	macLen     = 16
	maxName    = 63
)

// Msg is a probe or its answer.
type Msg struct {
	Answer bool
	Nonce  uint64
	// At is when it was sent (Unix milliseconds, the sender's clock).
	At int64
	// From is the sender's node name, To the node the probe is for.
	From, To string
	// Addr is the address the probe was sent to.
	Addr netip.Addr
	// SeenAs is where the answered probe came from (answers only).
	SeenAs netip.AddrPort
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed path message")

// Encode returns m authenticated with key.
func Encode(m Msg, key []byte) ([]byte, error) {
	if len(m.From) == 0 || len(m.From) > maxName || len(m.To) == 0 || len(m.To) > maxName {
		return nil, fmt.Errorf("path message names %q, %q: want 1 to %d bytes each", m.From, m.To, maxName)
	}
	if !m.Addr.IsValid() {
		return nil, errors.New("path message without the address probed")
	}
	kind := byte(kindProbe)
	if m.Answer {
		kind = kindAnswer
	}
	b := []byte{Magic, version, kind}
	b = binary.BigEndian.AppendUint64(b, m.Nonce)
	b = binary.BigEndian.AppendUint64(b, uint64(m.At))
	b = append(append(b, byte(len(m.From))), m.From...)
	b = append(append(b, byte(len(m.To))), m.To...)
	b = appendAddr(b, m.Addr.Unmap())
	if m.Answer {
		b = appendAddr(b, m.SeenAs.Addr().Unmap())
		b = binary.BigEndian.AppendUint16(b, m.SeenAs.Port())
	}
	return append(b, sum(key, b)...), nil
}

// Decode parses b and checks it against the keys (any of them: during a
// key rotation members hold several).
func Decode(b []byte, keys [][]byte) (Msg, error) {
	var m Msg
	if len(b) < 3+16+macLen || b[0] != Magic {
		return m, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if b[1] != version {
		return m, fmt.Errorf("%w: version %d, want %d", ErrMalformed, b[1], version)
	}
	body, mac := b[:len(b)-macLen], b[len(b)-macLen:]
	ok := false
	for _, k := range keys {
		if hmac.Equal(mac, sum(k, body)) {
			ok = true
			break
		}
	}
	if !ok {
		return m, fmt.Errorf("%w: not signed with a cluster key", ErrMalformed)
	}
	switch body[2] {
	case kindProbe:
	case kindAnswer:
		m.Answer = true
	default:
		return m, fmt.Errorf("%w: kind %d", ErrMalformed, body[2])
	}
	m.Nonce = binary.BigEndian.Uint64(body[3:11])
	m.At = int64(binary.BigEndian.Uint64(body[11:19]))
	r := reader{b: body[19:]}
	m.From, m.To = r.str(), r.str()
	m.Addr = r.addr()
	if m.Answer {
		a := r.addr()
		m.SeenAs = netip.AddrPortFrom(a, r.u16())
	}
	if r.err != nil || len(r.b) != 0 || m.From == "" || m.To == "" {
		return Msg{}, fmt.Errorf("%w: bad body", ErrMalformed)
	}
	return m, nil
}

func sum(key, b []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("vxnet path probe\x00"))
	h.Write(b)
	return h.Sum(nil)[:macLen]
}

func appendAddr(b []byte, a netip.Addr) []byte {
	s := a.AsSlice()
	return append(append(b, byte(len(s))), s...)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n > len(r.b) {
		r.err = ErrMalformed
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) str() string {
	n := r.take(1)
	if n == nil {
		return ""
	}
	return string(r.take(int(n[0])))
}

func (r *reader) addr() netip.Addr {
	n := r.take(1)
	if n == nil || (n[0] != 4 && n[0] != 16) {
		r.err = ErrMalformed
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(r.take(int(n[0])))
	return a
}

func (r *reader) u16() uint16 {
	b := r.take(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// MaxSkew is how far a probe's time may be from the receiver's clock.
const MaxSkew = 30 * time.Second

// Fresh reports whether a probe sent at m.At may be taken as sent now
// (within MaxSkew of now): a recorded probe replayed later is not.
func (m Msg) Fresh(now time.Time) bool {
	d := now.Sub(time.UnixMilli(m.At))
	return d < MaxSkew && d > -MaxSkew
}
