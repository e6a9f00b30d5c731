package recovery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// lockRes is a fake resource with a node lock whose answer the test sets.
type lockRes struct {
	*fakeres.Resource
	mu     sync.Mutex
	answer error // what LockNode returns
	taken  []*fakeLock
}

func (r *lockRes) set(err error) { r.mu.Lock(); r.answer = err; r.mu.Unlock() }

func (r *lockRes) LockNode(_ context.Context, node string) (drivers.NodeLock, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.answer != nil {
		return nil, r.answer
	}
	l := &fakeLock{lost: make(chan struct{})}
	r.taken = append(r.taken, l)
	return l, nil
}

// open counts the locks taken and not closed.
func (r *lockRes) open() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.taken {
		if !l.isClosed() {
			n++
		}
	}
	return n
}

type fakeLock struct {
	mu       sync.Mutex
	lost     chan struct{}
	lostOnce sync.Once
	closed   bool
}

func (l *fakeLock) Lost() <-chan struct{} { return l.lost }
func (l *fakeLock) lose()                 { l.lostOnce.Do(func() { close(l.lost) }) }
func (l *fakeLock) Close() error          { l.mu.Lock(); l.closed = true; l.mu.Unlock(); return nil }
func (l *fakeLock) isClosed() bool        { l.mu.Lock(); defer l.mu.Unlock(); return l.closed }

var errDown = errors.New("connection refused")

func TestLockNode(t *testing.T) {
	inUse := &drivers.NodeInUseError{Node: "n1", Resource: "b", Holder: "connection 7"}
	for _, c := range []struct {
		name     string
		a, b     error // LockNode's answers
		wantErr  error
		wantHeld bool
	}{
		{"both take it", nil, nil, nil, true},
		{"held by another session on one: refused, the other released", nil, inUse, drivers.ErrNodeInUse, false},
		{"one unreachable: started, not held", nil, errDown, nil, false},
		{"one unreachable, one in use: refused", errDown, inUse, drivers.ErrNodeInUse, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &lockRes{Resource: fakeres.New("a"), answer: c.a}
			b := &lockRes{Resource: fakeres.New("b"), answer: c.b}
			plain := fakeres.New("c") // no node lock: not counted
			locks, err := LockNode(context.Background(), "n1", []drivers.Resource{a, b, plain}, 0, nil)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("LockNode: %v, want %v", err, c.wantErr)
			}
			if err != nil {
				if locks != nil {
					t.Fatal("a refused LockNode returned locks")
				}
				if a.open()+b.open() != 0 {
					t.Fatalf("a refused LockNode kept %d lock(s)", a.open()+b.open())
				}
				if err.Error() != inUse.Error() {
					t.Errorf("error %q, want %q", err, inUse)
				}
				return
			}
			defer locks.Close()
			if got := locks.Held(); got != c.wantHeld {
				t.Fatalf("Held = %v, want %v", got, c.wantHeld)
			}
			if !c.wantHeld {
				if m := locks.Missing(); len(m) != 1 || m[0] != "b" {
					t.Fatalf("Missing = %v, want [b]", m)
				}
				// The resource comes back: Retake takes it.
				b.set(nil)
				if err := locks.Retake(context.Background()); err != nil || !locks.Held() {
					t.Fatalf("Retake: %v, Held %v; want held", err, locks.Held())
				}
			}
			if err := locks.Close(); err != nil || a.open()+b.open() != 0 {
				t.Fatalf("Close: %v, %d lock(s) left open", err, a.open()+b.open())
			}
		})
	}
}

// A lost lock turns Held off (it is closed and forgotten) until Retake
// takes it again.
func TestNodeLocksLost(t *testing.T) {
	a := &lockRes{Resource: fakeres.New("a")}
	locks, err := LockNode(context.Background(), "n1", []drivers.Resource{a}, 0, nil)
	if err != nil || !locks.Held() {
		t.Fatalf("LockNode: %v, Held %v", err, locks != nil && locks.Held())
	}
	defer locks.Close()
	a.taken[0].lose()
	if locks.Held() {
		t.Fatal("Held after the lock was lost")
	}
	if !a.taken[0].isClosed() {
		t.Error("the lost lock was not closed")
	}
	if err := locks.Retake(context.Background()); err != nil || !locks.Held() {
		t.Fatalf("Retake: %v, Held %v", err, locks.Held())
	}
}

// LockNode waits, bounded, for a lock in use to be released (a dead
// process's session ending), then refuses.
func TestLockNodeWaits(t *testing.T) {
	inUse := &drivers.NodeInUseError{Node: "n1", Resource: "a"}
	a := &lockRes{Resource: fakeres.New("a"), answer: inUse}
	go func() {
		time.Sleep(300 * time.Millisecond) // the "server" ends the dead session
		a.set(nil)
	}()
	locks, err := LockNode(context.Background(), "n1", []drivers.Resource{a}, 5*time.Second, nil)
	if err != nil {
		t.Fatalf("LockNode with a lock released after 300ms: %v", err)
	}
	_ = locks.Close()

	a.set(inUse)
	start := time.Now()
	if _, err := LockNode(context.Background(), "n1", []drivers.Resource{a}, 400*time.Millisecond, nil); !errors.Is(err, drivers.ErrNodeInUse) {
		t.Fatalf("LockNode with a live holder: %v, want ErrNodeInUse", err)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 3*time.Second {
		t.Errorf("refused after %v, want after the 400ms wait", d)
	}
}

// DeadBeforeValid false: the pass uses the fence, so an earlier
// incarnation's branch within its fence is left alone; true: rolled back.
func TestDeadBeforeValid(t *testing.T) {
	for _, valid := range []bool{false, true} {
		e := newEnv(t, func(c *Config) {
			c.DeadBefore = time.Now()
			c.DeadBeforeValid = func() bool { return valid }
			c.Settle = 20 * time.Millisecond
		})
		g := gid("n1", time.Second, time.Minute) // began before DeadBefore, within its fence
		e.a.AddPrepared(x(g, 0))
		e.rec.PassSettled(context.Background())
		want := "prepared"
		if valid {
			want = "rolled-back"
		}
		if st := e.a.State(x(g, 0)); st != want {
			t.Errorf("DeadBeforeValid %v: branch %s, want %s", valid, st, want)
		}
	}
}
