package cluster

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Calls are the requests this member made that wait for their response,
// by ID; both backends carry them their own way.
type Calls struct {
	mu      sync.Mutex
	waiting map[string]chan *Call
	seq     int
}

// Open registers a new call of member self and returns its ID, where its
// response arrives, and the function that forgets it.
func (c *Calls) Open(self string) (string, chan *Call, func()) {
	ch := make(chan *Call, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiting == nil {
		c.waiting = map[string]chan *Call{}
	}
	c.seq++
	// The time keeps IDs of a restarted member apart from its earlier ones.
	id := fmt.Sprintf("%s.%d.%d", self, time.Now().UnixNano(), c.seq)
	c.waiting[id] = ch
	return id, ch, func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}
}

// Deliver hands a response to its waiting call (none: dropped).
func (c *Calls) Deliver(r *Call) {
	c.mu.Lock()
	ch := c.waiting[r.ID]
	c.mu.Unlock()
	if ch != nil {
		select {
		case ch <- r:
		default:
		}
	}
}

// Wait returns the response of a call, or an error after timeout (hint
// says what may be wrong).
func Wait(ch chan *Call, op, node string, timeout time.Duration, hint string) (json.RawMessage, error) {
	select {
	case c := <-ch:
		if c.Error != "" {
			return nil, fmt.Errorf("%s on %s: %s", op, node, c.Error)
		}
		return c.Body, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("%s request to %s: no answer within %s%s", op, node, timeout, hint)
	}
}
