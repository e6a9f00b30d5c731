package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/mysql"
)

type oneBranch struct{ b drivers.Branch }

func (e *oneBranch) Enlist(ctx context.Context, r drivers.Resource) (drivers.Branch, error) {
	return e.b, nil
}

func openMy(t *testing.T, url string, conns int) *sql.DB {
	t.Helper()
	cfg, err := mysql.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	t.Cleanup(func() { db.Close() })
	return db
}

// After a MariaDB restart, connection ids start again at 1, so a new
// session can carry the id of the session that prepared a branch. Phase 2
// must still finish the branch (it must not wait forever for a "still
// attached" owner that is in fact a stranger).
func TestMariaDBPhase2AfterRestartWithReusedConnectionID(t *testing.T) {
	// The stranger with the owner's id comes from another pool, or from
	// the branch's own Resource, which then learns that id anew (so the
	// owner's boot time must be the one kept with the branch).
	for _, viaResource := range []bool{false, true} {
		name := "stranger from another pool"
		if viaResource {
			name = "stranger begun by the same resource"
		}
		t.Run(name, func(t *testing.T) { phase2AfterRestart(t, viaResource) })
	}
}

func phase2AfterRestart(t *testing.T, viaResource bool) {
	e := getEnv(t)
	ctx := context.Background()
	db := openMy(t, e.pair.MyURL(), 4)
	tbl := "xab_reuse_" + suffix()
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+tbl+" (id INT PRIMARY KEY, v INT)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), "DROP TABLE "+tbl) })
	// Boot times are known to the second: make sure this boot and the
	// restart below are told apart (a condition, polled).
	for {
		var uptime int
		if err := db.QueryRowContext(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'").Scan(&uptime); err != nil {
			t.Fatal(err)
		}
		if uptime >= 3 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r := mysql.New("my", db)
	now := time.Now()
	xid := drivers.XID{Global: drivers.MustGlobalID("reuse", now.Truncate(time.Millisecond), 1, now.Add(time.Hour).Truncate(time.Millisecond))}
	b, err := r.Begin(ctx, xid)
	if err != nil {
		t.Fatal(err)
	}
	h, err := r.Enlist(ctx, &oneBranch{b})
	if err != nil {
		t.Fatal(err)
	}
	var owner int64
	if err := h.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&owner); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (1, 1)"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("prepare: %v %v", v, err)
	}

	if err := e.pair.Kill9(ctx, dbproc.My); err != nil {
		t.Fatal(err)
	}
	if err := e.pair.StartServer(ctx, dbproc.My); err != nil {
		t.Fatal(err)
	}
	// Hold new sessions until one has the owner's old id.
	other := openMy(t, e.pair.MyURL(), 300)
	var held []*sql.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	want := owner // the id the last held session must have
	if viaResource {
		want = owner - 1 // and the resource's next session gets the owner's
	}
	for last := int64(0); last != want && want > 0; {
		if len(held) > 250 || last > want {
			t.Fatalf("no new session got connection id %d (last %d)", want, last)
		}
		c, err := other.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&last); err != nil {
			t.Fatal(err)
		}
	}
	if viaResource {
		now := time.Now()
		x2 := drivers.XID{Global: drivers.MustGlobalID("reuse", now.Truncate(time.Millisecond), 2, now.Add(time.Hour).Truncate(time.Millisecond))}
		b2, err := r.Begin(ctx, x2)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = b2.Rollback(context.Background()); _ = b2.Close() }()
		h2, err := r.Enlist(ctx, &oneBranch{b2})
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		if err := h2.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
			t.Fatal(err)
		}
		if id != owner {
			t.Fatalf("the resource's new session got id %d, want the owner's %d", id, owner)
		}
	}

	// Phase 2, as the coordinator drives it: retried while busy or in doubt.
	deadline := time.Now().Add(20 * time.Second)
	for {
		err = b.Commit(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, drivers.ErrBusy) && !errors.Is(err, drivers.ErrInDoubt) && !errors.Is(err, drivers.ErrRetryable) {
			t.Fatalf("commit after restart: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("phase 2 still not done 20s after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the coordinator's backoff
	}
	_ = b.Close()
	var n int
	if err := db.QueryRowContext(ctx, fmt.Sprintf("SELECT COUNT(*) FROM %s", tbl)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("committed row count %d (%v), want 1", n, err)
	}
}
