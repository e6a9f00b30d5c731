package drivers

import (
	"context"
	"errors"
	"fmt"
)

// NodeLocker is implemented by resources that can hold a node lock: a
// server-side lock, named after a coordinator's node id, held by a session
// of the database for as long as that session lives. It is how a
// coordinator proves that no other live process uses its node id on the
// databases it shares with it (the restart fast path,
// recovery.Config.DeadBefore, is correct only then): the server releases a
// dead process's lock when its session ends, so a restart can take it, and
// refuses a second live process. It is optional: a resource that does not
// implement it is simply not locked.
type NodeLocker interface {
	// LockNode takes the lock of node on a dedicated session without
	// waiting. A lock held by another session is an error matching
	// ErrNodeInUse (a *NodeInUseError naming the holder); any other error
	// means the lock could not be taken (server unreachable, ...).
	LockNode(ctx context.Context, node string) (NodeLock, error)
}

// NodeLock is a held node lock (NodeLocker.LockNode).
type NodeLock interface {
	// Lost is closed when the lock may no longer be held: its session
	// died or could not be reached (found by a periodic ping). The lock
	// is not taken again by itself.
	Lost() <-chan struct{}
	// Close releases the lock and its session. It is idempotent.
	Close() error
}

// ErrNodeInUse: a node lock is held by another session, i.e. another live
// coordinator uses the same node id on this resource.
var ErrNodeInUse = errors.New("node id in use by another live coordinator")

// NodeInUseError is the error LockNode returns when another session holds
// the lock. It matches ErrNodeInUse.
type NodeInUseError struct {
	Node     string // the node id
	Resource string // the resource's name
	Holder   string // who holds it, as the server names it (e.g. "connection 1234", "pid 5678"); may be empty
}

func (e *NodeInUseError) Error() string {
	holder := e.Holder
	if holder == "" {
		holder = "another session"
	}
	return fmt.Sprintf("node id %s is in use by another live coordinator (lock held by %s on resource %s); each coordinator needs its own node id",
		e.Node, holder, e.Resource)
}

// Is makes errors.Is(err, ErrNodeInUse) hold.
func (e *NodeInUseError) Is(target error) bool { return target == ErrNodeInUse }
