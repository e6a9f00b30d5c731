package postgres_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/postgres"
)

// TestNodeLock runs the node-lock conformance suite; the lock is visible in
// pg_locks under the documented keys (NodeLockKey), and a refusal names the
// holder's pid.
func TestNodeLock(t *testing.T) {
	e := newEnv(t)
	// pid of the session holding node's lock, 0 if none.
	holder := func(node string) int64 {
		ns, key := postgres.NodeLockKey(node)
		return e.queryInt(`SELECT COALESCE(max(pid), 0) FROM pg_locks WHERE locktype = 'advisory' AND granted
			AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2`, int64(ns), int64(uint32(key)))
	}
	drivertest.RunNodeLock(t, drivertest.NodeLockHarness{
		Mine:      e.r,
		Other:     postgres.New("pg-other", e.admin), // another process's resource: its own sessions
		OtherName: "pg-other",
		Holder:    func(t *testing.T, node string) string { return fmt.Sprintf("pid %d", holder(node)) },
		Held:      func(t *testing.T, node string) bool { return holder(node) != 0 },
		KillHolder: func(t *testing.T, node string) {
			pid := holder(node)
			if pid == 0 {
				t.Fatalf("no session holds %s's lock", node)
			}
			e.terminate(pid)
		},
	})
}

// TestNodeLockBadNode: an invalid node id is refused before any session is
// used.
func TestNodeLockBadNode(t *testing.T) {
	e := newEnv(t)
	for _, node := range []string{"", "Upper", "x'; SELECT 1; --", strings.Repeat("a", 25)} {
		if lk, err := e.r.LockNode(ctxT(t), node); err == nil {
			_ = lk.Close()
			t.Errorf("LockNode(%q) = nil error; want a refusal", node)
		}
	}
	e.assertPoolClean()
}
