// Package lockwatch watches the session that holds a node lock
// (drivers.NodeLock): a goroutine pings it periodically and reports the
// lock lost when a ping fails. The adapters share it.
package lockwatch

import (
	"context"
	"sync"
	"time"
)

// DefaultEvery is the interval between pings.
const DefaultEvery = time.Second

// Watch pings a lock's session until Stop; Lost is closed at the first
// failed ping.
type Watch struct {
	lost     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// Start starts the watch. ping gets a context bounded by every; it must
// not be called concurrently with anything else on the session, which is
// why the session's owner calls Stop (which waits for the goroutine)
// before using it again.
func Start(every time.Duration, ping func(context.Context) error) *Watch {
	if every <= 0 {
		every = DefaultEvery
	}
	w := &Watch{lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), every)
			err := ping(ctx)
			cancel()
			if err != nil {
				close(w.lost)
				return
			}
		}
	}()
	return w
}

// Lost is closed when a ping failed.
func (w *Watch) Lost() <-chan struct{} { return w.lost }

// IsLost reports whether Lost is closed.
func (w *Watch) IsLost() bool {
	select {
	case <-w.lost:
		return true
	default:
		return false
	}
}

// Stop stops the goroutine and waits for it. It is idempotent.
func (w *Watch) Stop() {
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
}
