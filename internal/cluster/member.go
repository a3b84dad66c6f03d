package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"time"
)

// What every store's members share: how a member looks to the others, the
// counts of its traffic, and the errors of joining.

// ErrNameInUse is returned by Join when a live member already has this
// member's name at another address.
var ErrNameInUse = errors.New("member name already in use")

// Member is one member as this agent sees it.
type Member struct {
	Name        string        `json:"name"`
	Addr        netip.Addr    `json:"addr"`
	State       string        `json:"state"`
	LastContact time.Time     `json:"lastContact,omitzero"`
	RTT         time.Duration `json:"rtt,omitempty"`
}

// Traffic counts the messages and bytes of vxnet's own messages (records,
// state exchanges, calls) this member received and sent; memberlist's
// probes are not counted.
type Traffic struct {
	InMessages, InBytes, OutMessages, OutBytes int64
}

// AffectsKernel reports whether a change of r can change what a host
// programs: health views cannot, so they trigger no reconcile pass.
func AffectsKernel(r Record) bool { return !strings.HasPrefix(r.Key, PrefixHealth) }

// Fingerprint names a key without revealing it.
func Fingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:6])
}
