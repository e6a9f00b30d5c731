package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/lockwatch"
)

// NodeLockPrefix is the prefix of a node lock's name: node "demo" holds the
// user-level lock "xabridge-node:demo" (GET_LOCK), which operators see in
// performance_schema.metadata_locks (MySQL 8) or
// information_schema.METADATA_LOCK_INFO (MariaDB, plugin metadata_lock_info)
// and can look up with SELECT IS_USED_LOCK('xabridge-node:demo'). Such locks
// are server-wide, like the XA RECOVER list recovery reads, so a node id
// must be unique per server.
const NodeLockPrefix = "xabridge-node:"

// nodeLockPing is the interval between pings of a node lock's session.
var nodeLockPing = lockwatch.DefaultEvery

// LockNode takes node's lock (drivers.NodeLocker): GET_LOCK(name, 0) on a
// connection pinned for as long as the lock is held. A lock held by
// another session is a *drivers.NodeInUseError naming its connection id
// (IS_USED_LOCK).
func (r *Resource) LockNode(ctx context.Context, node string) (drivers.NodeLock, error) {
	if err := drivers.ValidateNodeID(node); err != nil {
		return nil, fmt.Errorf("%s: lock node: %w", r.name, err)
	}
	name := NodeLockPrefix + node // ≤ 14+24 characters: under the servers' 64
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: lock node %s: %w", r.name, node, err)
	}
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", name).Scan(&got); err != nil {
		discard(conn)
		return nil, fmt.Errorf("%s: lock node %s: %w", r.name, node, err)
	}
	if !got.Valid { // an error in GET_LOCK itself (out of memory, the thread killed)
		discard(conn)
		return nil, fmt.Errorf("%s: lock node %s: GET_LOCK returned NULL", r.name, node)
	}
	if got.Int64 != 1 {
		holder := ""
		var id sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", name).Scan(&id); err == nil && id.Valid {
			holder = fmt.Sprintf("connection %d", id.Int64)
		}
		_ = conn.Close() // holds nothing: back to the pool
		return nil, &drivers.NodeInUseError{Node: node, Resource: r.name, Holder: holder}
	}
	l := &myNodeLock{conn: conn, name: name}
	l.watch = lockwatch.Start(nodeLockPing, conn.PingContext)
	return l, nil
}

// myNodeLock is a held node lock on MySQL/MariaDB.
type myNodeLock struct {
	conn  *sql.Conn
	name  string
	watch *lockwatch.Watch
	once  sync.Once
}

func (l *myNodeLock) Lost() <-chan struct{} { return l.watch.Lost() }

// Close releases the lock and discards the session: it never goes back to
// the pool, so no later user of it can inherit a lock.
func (l *myNodeLock) Close() error {
	l.once.Do(func() {
		l.watch.Stop()
		if !l.watch.IsLost() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = l.conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", l.name)
			cancel()
		}
		discard(l.conn)
	})
	return nil
}

var _ drivers.NodeLocker = (*Resource)(nil)
