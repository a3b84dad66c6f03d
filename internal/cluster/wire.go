package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// MaxMessage bounds a decoded message (a full state exchange included).
const MaxMessage = 64 << 20

// Message kinds.
const (
	MsgRecords = "records" // pushed changes
	MsgState   = "state"   // full state (anti-entropy)
)

// Message is what agents send each other.
type Message struct {
	Kind    string   `json:"kind"`
	Records []Record `json:"records"`
}

// Encode serialises a message.
func Encode(m Message) ([]byte, error) {
	var b []byte
	var err error
	if p, ok := plain(m.Records); ok {
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
	if m.Kind != MsgRecords && m.Kind != MsgState {
		return Message{}, fmt.Errorf("%w %q: want %q or %q", ErrUnknownKind, m.Kind, MsgRecords, MsgState)
	}
	for i, r := range m.Records {
		if err := ValidateRecord(r); err != nil {
			return Message{}, fmt.Errorf("record %d: %w", i, err)
		}
	}
	return m, nil
}
