package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vxnet/vxnet/internal/model"
)

// MaxMessage bounds a decoded message (a full state exchange included).
const MaxMessage = 64 << 20

// Message kinds.
const (
	MsgRecords  = "records"  // pushed changes
	MsgState    = "state"    // full state (anti-entropy)
	MsgRequest  = "request"  // a call to one member (Call)
	MsgResponse = "response" // its answer
	// MsgDigest summarises the sender's state for anti-entropy (Digest),
	// with records the receiver lacks; agents before it ignore the kind.
	MsgDigest = "digest"
)

// Message is what agents send each other.
type Message struct {
	Kind    string   `json:"kind"`
	Records []Record `json:"records"`
	Call    *Call    `json:"call,omitempty"`
	// From is the sender (digest messages).
	From   string  `json:"from,omitempty"`
	Digest *Digest `json:"digest,omitempty"`
}

// Call is a request to one member, or its response (same ID).
type Call struct {
	ID   string          `json:"id"`
	From string          `json:"from"` // the sender's node name
	Op   string          `json:"op"`
	Body json.RawMessage `json:"body,omitempty"`
	// Error is the callee's error (responses only).
	Error string `json:"error,omitempty"`
}

// Encode serialises a message.
func Encode(m Message) ([]byte, error) {
	var b []byte
	var err error
	if p, ok := plain(m.Records); ok && m.Call == nil && m.Digest == nil && m.From == "" {
		b, err = json.Marshal(struct {
			Kind    string       `json:"kind"`
			Records plainRecords `json:"records"`
		}{m.Kind, p})
	} else {
		b, err = json.Marshal(m)
	}
	if err != nil {
		return nil, fmt.Errorf("encode %s message: %w", m.Kind, err)
	}
	return b, nil
}

// ErrUnknownKind refuses a message of a kind this agent does not know (from
// a newer agent): not malformed, just not for us.
var ErrUnknownKind = errors.New("unknown message kind")

// DecodeMessage parses and validates a message from the network. Every
// record must be well formed; a message with any bad record is refused
// whole. Fields this agent does not know (from a newer agent) are ignored
// on the message and kept on records (see WireFormat).
func DecodeMessage(b []byte) (Message, error) {
	var m Message
	if len(b) == 0 {
		return m, errors.New("empty message")
	}
	if len(b) > MaxMessage {
		return m, fmt.Errorf("message of %d bytes exceeds the %d byte limit", len(b), MaxMessage)
	}
	var fast struct {
		Kind    string       `json:"kind"`
		Records plainRecords `json:"records"`
	}
	if decodeStrict(b, &fast) == nil {
		m = Message{Kind: fast.Kind, Records: fast.Records.records()}
	} else {
		// Fields this version does not know, or a broken message.
		dec := json.NewDecoder(bytes.NewReader(b))
		if err := dec.Decode(&m); err != nil {
			return Message{}, fmt.Errorf("malformed message: %w", err)
		}
		if dec.More() {
			return Message{}, errors.New("malformed message: trailing data")
		}
	}
	switch m.Kind {
	case MsgRecords, MsgState:
	case MsgDigest:
		if m.Digest == nil {
			return Message{}, errNoDigest
		}
		if err := model.ValidateName("node", m.From); err != nil {
			return Message{}, fmt.Errorf("digest message: %w", err)
		}
		for _, o := range m.Digest.Origins {
			if err := model.ValidateName("origin node", o.Origin); err != nil {
				return Message{}, fmt.Errorf("digest message: %w", err)
			}
			if o.Count < 1 {
				return Message{}, fmt.Errorf("digest message: origin %s with %d records: want at least 1", o.Origin, o.Count)
			}
		}
	case MsgRequest, MsgResponse:
		if m.Call == nil || m.Call.ID == "" || m.Call.Op == "" {
			return Message{}, fmt.Errorf("%s message without a call ID and operation", m.Kind)
		}
		if err := model.ValidateName("node", m.Call.From); err != nil {
			return Message{}, fmt.Errorf("%s message: %w", m.Kind, err)
		}
	default:
		return Message{}, fmt.Errorf("%w %q: want %q, %q, %q, %q or %q", ErrUnknownKind, m.Kind, MsgRecords, MsgState, MsgDigest, MsgRequest, MsgResponse)
	}
	for i, r := range m.Records {
		if err := ValidateRecord(r); err != nil {
			return Message{}, fmt.Errorf("record %d: %w", i, err)
		}
	}
	return m, nil
}
