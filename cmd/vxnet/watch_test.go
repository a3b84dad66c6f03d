package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

// keepWatching starts a watch that failed again, with a call for what it
// missed, and stops with its context.
func TestKeepWatchingRestarts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var starts, missed atomic.Int32
	third := make(chan struct{})
	watch := func(ctx context.Context, changed func()) error {
		switch starts.Add(1) {
		case 1, 2:
			return errors.New("netlink: no buffer space available")
		case 3:
			close(third)
		}
		<-ctx.Done()
		return nil
	}
	done := make(chan struct{})
	go func() {
		keepWatching(ctx, slog.New(slog.DiscardHandler), "test", watch, func() { missed.Add(1) }, time.Millisecond)
		close(done)
	}()
	select {
	case <-third:
	case <-time.After(5 * time.Second):
		t.Fatalf("the watch was started %d times, want it started again after each failure", starts.Load())
	}
	if n := missed.Load(); n != 2 {
		t.Errorf("%d calls for missed changes after 2 failures, want 2", n)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("keepWatching did not return after its context ended")
	}
	if n := starts.Load(); n != 3 {
		t.Errorf("watch started %d times, want 3", n)
	}
}
