package lockwatch

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestWatch(t *testing.T) {
	for _, c := range []struct {
		name     string
		failAt   int64 // the ping that fails (0: none)
		wantLost bool
	}{
		{"pings succeed", 0, false},
		{"third ping fails", 3, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var n atomic.Int64
			w := Start(5*time.Millisecond, func(context.Context) error {
				if n.Add(1) == c.failAt {
					return errors.New("connection reset")
				}
				return nil
			})
			deadline := time.After(5 * time.Second)
			for n.Load() < 5 && !w.IsLost() {
				select {
				case <-deadline:
					t.Fatal("the watch did not ping")
				case <-time.After(time.Millisecond):
				}
			}
			w.Stop()
			w.Stop() // idempotent
			if w.IsLost() != c.wantLost {
				t.Fatalf("lost %v, want %v", w.IsLost(), c.wantLost)
			}
			if c.wantLost && n.Load() != c.failAt {
				t.Errorf("%d pings, want none after the failed one (%d)", n.Load(), c.failAt)
			}
		})
	}
}
