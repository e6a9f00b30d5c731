package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/internal/netfault"
	"github.com/xabridge/xabridge/postgres"
)

// A PREPARE TRANSACTION held in a partition reaches the server long after
// the coordinator gave up (in doubt) and rolled the branch back. The
// branch's session may not sit idle inside its transaction past the global
// deadline (idle_in_transaction_session_timeout, set at BEGIN), so by then
// PostgreSQL has ended it, and the late bytes prepare nothing: no branch is
// left prepared, holding locks, for recovery to find.
func TestLatePrepareAfterAPartitionPreparesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_late", "id BIGINT PRIMARY KEY")
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	p, err := netfault.Listen(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr()
	r := postgres.New("pg-partitioned", newPool(t, u.String(), 1))

	now := time.Now()
	xid := drivers.XID{Global: drivers.MustGlobalID(drivertest.NodeID, now.UTC().Truncate(time.Millisecond), rand.Uint32(), now.Add(time.Second).UTC().Truncate(time.Millisecond))}
	tx := &fakeTx{xid: xid}
	h, err := r.Enlist(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	b := tx.b
	defer b.Close()
	if _, err := h.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES ($1)", tbl), 1); err != nil {
		t.Fatal(err)
	}
	idle := func() int64 {
		return e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND query LIKE $1", "%"+tbl+"%")
	}
	if idle() != 1 {
		t.Fatal("the branch's session is not idle in its transaction")
	}

	p.Blackhole()
	pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = b.Prepare(pctx)
	cancel()
	if !errors.Is(err, drivers.ErrInDoubt) {
		t.Fatalf("Prepare into a partition: %v, want in doubt", err)
	}
	// The server ends the session once it has idled past the deadline.
	e.waitFor("the branch's session to be ended by the server", func() bool { return idle() == 0 })
	p.Heal() // the held PREPARE TRANSACTION arrives, late
	e.waitFor("the partitioned connection to close", func() bool { return p.Conns() == 0 })
	if n := e.preparedCount(xid.GID()); n != 0 {
		t.Fatalf("the late PREPARE TRANSACTION prepared the branch (%d)", n)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 0 {
		t.Fatalf("%d rows of the branch are visible", n)
	}
}
