package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// NodeLocks holds a node's lock (drivers.NodeLocker) on every resource that
// can hold one. It is what makes Config.DeadBefore safe with file logs,
// which nothing else binds to one live process: set Config.DeadBeforeValid
// to Held.
type NodeLocks struct {
	node    string
	logger  *slog.Logger
	lockers []namedLocker

	mu   sync.Mutex
	held map[string]drivers.NodeLock
}

type namedLocker struct {
	name string
	l    drivers.NodeLocker
}

// LockNode takes node's lock on every resource of resources that implements
// drivers.NodeLocker. If one answers that another session holds it, it
// releases what it took and returns that error (matching
// drivers.ErrNodeInUse): another live coordinator uses the node id, and
// this one must not start. A resource that cannot be reached does not fail
// it (availability): Held is false until Retake takes the missing locks.
// logger (nil: discard) hears about those.
//
// A lock in use is tried again every 200ms for up to wait: a process
// restarted right after a SIGKILL must not be refused because a server has
// not yet ended its predecessor's session (MariaDB may keep a dead
// client's session, and its lock, a moment). A live holder is still there
// after it. DefaultNodeLockWait is a good wait at start-up.
func LockNode(ctx context.Context, node string, resources []drivers.Resource, wait time.Duration, logger *slog.Logger) (*NodeLocks, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &NodeLocks{node: node, logger: logger, held: map[string]drivers.NodeLock{}}
	for _, r := range resources {
		if l, ok := r.(drivers.NodeLocker); ok {
			n.lockers = append(n.lockers, namedLocker{r.Name(), l})
		}
	}
	deadline := time.Now().Add(wait)
	for {
		err := n.Retake(ctx)
		if !errors.Is(err, drivers.ErrNodeInUse) {
			return n, nil
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			_ = n.Close()
			return nil, err
		}
		t := time.NewTimer(nodeLockRetry)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// DefaultNodeLockWait is how long LockNode at start-up waits for a lock in
// use to be released (by a server ending a dead process's session).
const DefaultNodeLockWait = 5 * time.Second

// nodeLockRetry is the interval between LockNode's tries.
const nodeLockRetry = 200 * time.Millisecond

// Retake takes the locks not held (never taken, or lost). It returns an
// error matching drivers.ErrNodeInUse if another session holds one, and
// the other failures joined; Held says whether all are held afterwards.
func (n *NodeLocks) Retake(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropLost()
	var inUse, errs error
	for _, l := range n.lockers {
		if n.held[l.name] != nil {
			continue
		}
		lk, err := l.l.LockNode(ctx, n.node)
		switch {
		case err == nil:
			n.held[l.name] = lk
		case errors.Is(err, drivers.ErrNodeInUse):
			if inUse == nil {
				inUse = err
			}
		default:
			n.logger.Warn("node lock not taken: restart fast path off until it is", "resource", l.name, "err", err)
			errs = errors.Join(errs, err)
		}
	}
	if inUse != nil {
		return inUse
	}
	return errs
}

// dropLost closes and forgets the locks whose Lost fired. n.mu is held.
func (n *NodeLocks) dropLost() {
	for name, lk := range n.held {
		select {
		case <-lk.Lost():
			n.logger.Warn("node lock lost: restart fast path off until it is taken again", "resource", name)
			_ = lk.Close()
			delete(n.held, name)
		default:
		}
	}
}

// Held reports whether the lock is held on every resource that can hold
// one (true when none can).
func (n *NodeLocks) Held() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropLost()
	return len(n.held) == len(n.lockers)
}

// Missing names the resources whose lock is not held.
func (n *NodeLocks) Missing() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropLost()
	var out []string
	for _, l := range n.lockers {
		if n.held[l.name] == nil {
			out = append(out, l.name)
		}
	}
	return out
}

// Close releases every lock. It is idempotent.
func (n *NodeLocks) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs error
	for name, lk := range n.held {
		if err := lk.Close(); err != nil {
			errs = errors.Join(errs, fmt.Errorf("node lock on %s: %w", name, err))
		}
		delete(n.held, name)
	}
	return errs
}
