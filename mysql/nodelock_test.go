package mysql

import (
	"fmt"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/drivers/drivertest"
)

// TestNodeLock runs the node-lock conformance suite; a refusal names the
// holder's connection id (IS_USED_LOCK), and KILL of that connection frees it.
func TestNodeLock(t *testing.T) {
	e := newEnv(t, 4)
	// connection id holding node's lock, 0 if none. The lock's name is
	// NodeLockPrefix + a node id: [a-z0-9:-] only.
	holder := func(node string) int64 {
		return e.queryInt(fmt.Sprintf("SELECT COALESCE(IS_USED_LOCK('%s'), 0)", NodeLockPrefix+node))
	}
	drivertest.RunNodeLock(t, drivertest.NodeLockHarness{
		Mine:      e.r,
		Other:     New("mysql-other", e.admin), // another process's resource: its own sessions
		OtherName: "mysql-other",
		Holder:    func(t *testing.T, node string) string { return fmt.Sprintf("connection %d", holder(node)) },
		Held:      func(t *testing.T, node string) bool { return holder(node) != 0 },
		KillHolder: func(t *testing.T, node string) {
			id := holder(node)
			if id == 0 {
				t.Fatalf("no session holds %s's lock", node)
			}
			e.sqlExec(fmt.Sprintf("KILL %d", id))
		},
	})
}

// TestNodeLockBadNode: an invalid node id is refused before any session is
// used.
func TestNodeLockBadNode(t *testing.T) {
	e := newEnv(t, 2)
	for _, node := range []string{"", "Upper", "x'; SELECT 1; --", strings.Repeat("a", 25)} {
		if lk, err := e.r.LockNode(ctxT(t), node); err == nil {
			_ = lk.Close()
			t.Errorf("LockNode(%q) = nil error; want a refusal", node)
		}
	}
	if n := e.db.Stats().InUse; n != 0 {
		t.Errorf("%d connections in use after refusals", n)
	}
}
