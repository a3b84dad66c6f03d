package model

import (
	"errors"
	"fmt"
)

// Kinds of domain error. Domain code wraps one of them (with Errorf); the
// transports map them to their own codes in one place each: the local API
// to HTTP statuses, the Docker driver to its error replies, the CNI plugin
// to CNI error codes.
var (
	// ErrInvalid: the request itself is wrong (a bad value, a missing field).
	ErrInvalid = errors.New("invalid")
	// ErrNotFound: the request names something that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request clashes with the cluster state (a taken
	// address, an overlapping subnet, a network still in use).
	ErrConflict = errors.New("conflict")
)

// kindError carries a kind beside its message, which it does not repeat.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// Errorf formats an error of a kind (ErrInvalid, ErrNotFound, ErrConflict):
// errors.Is(err, kind) holds, the message is the formatted text alone, and
// %w in format wraps as with fmt.Errorf.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// Kind returns the kind an error carries (nil when none).
func Kind(err error) error {
	for _, k := range []error{ErrInvalid, ErrNotFound, ErrConflict} {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}
