package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/lockwatch"
)

// NodeLockNamespace is the first key (pg_locks.classid) of every node lock:
// the bytes "xabr" as a big-endian int32.
const NodeLockNamespace int32 = 0x78616272

// NodeLockKey returns the two keys of node's advisory lock: the namespace
// and a 32-bit FNV-1a hash of the node id. Operators see a held node lock
// in pg_locks as locktype 'advisory', classid = NodeLockNamespace (2019647090),
// objid = the hash (as an unsigned oid), objsubid = 2, with the holder's
// pid. Two node ids with the same hash would refuse each other (a false
// refusal, never a missed one).
func NodeLockKey(node string) (namespace, key int32) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(node))
	return NodeLockNamespace, int32(h.Sum32())
}

// nodeLockPing is the interval between pings of a node lock's session.
var nodeLockPing = lockwatch.DefaultEvery

// LockNode takes node's lock (drivers.NodeLocker): a session-level
// pg_try_advisory_lock(NodeLockNamespace, hash) on a connection taken out of
// the pool for as long as the lock is held. Advisory locks are per
// database, like the prepared transactions a Resource finishes. A lock held
// by another session is a *drivers.NodeInUseError naming its pid.
func (r *Resource) LockNode(ctx context.Context, node string) (drivers.NodeLock, error) {
	if err := drivers.ValidateNodeID(node); err != nil {
		return nil, fmt.Errorf("%s: lock node: %w", r.name, err)
	}
	pc, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: lock node %s: %w", r.name, node, err)
	}
	conn := pc.Hijack() // ours now: the pool never hands out the lock's session
	closeConn := func() {
		cctx, cancel := context.WithTimeout(context.Background(), discardTimeout)
		defer cancel()
		_ = conn.Close(cctx)
	}
	ns, key := NodeLockKey(node)
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::int4, $2::int4)", ns, key).Scan(&got); err != nil {
		closeConn()
		return nil, fmt.Errorf("%s: lock node %s: %w", r.name, node, err)
	}
	if !got {
		holder := ""
		var pid int32
		err := conn.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2 LIMIT 1`, int64(ns), int64(uint32(key))).Scan(&pid)
		if err == nil {
			holder = fmt.Sprintf("pid %d", pid)
		}
		closeConn()
		return nil, &drivers.NodeInUseError{Node: node, Resource: r.name, Holder: holder}
	}
	l := &pgNodeLock{conn: conn, ns: ns, key: key}
	l.watch = lockwatch.Start(nodeLockPing, conn.Ping)
	return l, nil
}

// pgNodeLock is a held node lock on PostgreSQL.
type pgNodeLock struct {
	conn    *pgx.Conn
	ns, key int32
	watch   *lockwatch.Watch
	once    sync.Once
	err     error
}

func (l *pgNodeLock) Lost() <-chan struct{} { return l.watch.Lost() }

// Close unlocks and closes the session (closing it alone would release the
// lock; the unlock makes that explicit and immediate).
func (l *pgNodeLock) Close() error {
	l.once.Do(func() {
		l.watch.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if !l.watch.IsLost() {
			var ok bool
			if err := l.conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int4, $2::int4)", l.ns, l.key).Scan(&ok); err == nil && !ok {
				l.err = errors.New("node lock was not held at unlock")
			}
		}
		_ = l.conn.Close(ctx)
	})
	return l.err
}

var _ drivers.NodeLocker = (*Resource)(nil)
