package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"database/sql/driver"

	"github.com/jackc/pgx/v5"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// Recovery, however often and however eagerly it runs, never touches a
// prepared transaction it did not create: plain gids, other formatIDs, gids
// that look like ours but live in another PostgreSQL database.
func TestRecoveryNeverTouchesForeignTransactions(t *testing.T) {
	b := newBank(t, 4)
	ctx := context.Background()
	sfx := suffix()
	tbl := b.Table("accounts")

	// PostgreSQL, this database: a plain gid and a pgjdbc-style gid.
	pgGIDs := []string{"foreign-app-" + sfx, "1096044365_" + sfx + "_YnE="}
	for i, gid := range pgGIDs {
		c, err := pgx.Connect(ctx, dbtest.PG(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, fmt.Sprintf("BEGIN; UPDATE %s SET balance = balance + 1 WHERE id = %d; PREPARE TRANSACTION '%s'", tbl, 10+i, gid)); err != nil {
			t.Fatal(err)
		}
		_ = c.Close(ctx)
		t.Cleanup(func() { _, _ = b.PGPool.Exec(context.Background(), "ROLLBACK PREPARED '"+gid+"'") })
	}
	// PostgreSQL, another database: a gid that decodes as ours, of our node.
	node := "it-" + sfx
	otherDB := "xab_it_other_" + sfx
	if _, err := b.PGPool.Exec(ctx, "CREATE DATABASE "+otherDB); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dbtest.PG(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = otherDB
	oc, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	lookalike := drivers.XID{Global: drivers.MustGlobalID(node, now.Add(-time.Hour).Truncate(time.Millisecond), 1, now.Add(-time.Minute).Truncate(time.Millisecond))}
	if _, err := oc.Exec(ctx, "BEGIN; CREATE TABLE t (k INT); PREPARE TRANSACTION '"+lookalike.GID()+"'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = oc.Exec(context.Background(), "ROLLBACK PREPARED '"+lookalike.GID()+"'")
		_ = oc.Close(context.Background())
		_, _ = b.PGPool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+otherDB)
	})
	// MariaDB: another formatID, and a plain string xid.
	myXIDs := []string{fmt.Sprintf("X'%x',X'01',7", "foreign-"+sfx), fmt.Sprintf("'plain-%s'", sfx)}
	for i, x := range myXIDs {
		conn, err := b.MyDB.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"XA START " + x, fmt.Sprintf("UPDATE %s SET balance = balance + 1 WHERE id = %d", tbl, 12+i), "XA END " + x, "XA PREPARE " + x} {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		// Detach the branch: close the session for good, not back to the pool.
		_ = conn.Raw(func(any) error { return errDiscard })
		_ = conn.Close()
		t.Cleanup(func() {
			for i := 0; i < 100; i++ {
				if _, err := b.MyDB.ExecContext(context.Background(), "XA ROLLBACK "+x); err == nil {
					return
				}
				time.Sleep(50 * time.Millisecond) // the session may still be detaching
			}
		})
	}

	c := newCoord(t, b, func(c *xa.Config) { c.NodeID = node })
	zero := time.Duration(0)
	rec, err := recovery.New(recovery.Config{
		NodeID: node, Log: c.Log(), Resources: []drivers.Resource{b.PG, b.My}, Active: c.Active,
		MinAge: &zero, Settle: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	for pass := 0; pass < 3; pass++ {
		rep := rec.Pass(ctx, false)
		for _, br := range rep.Branches {
			if br.Result != "" {
				t.Errorf("pass %d acted on %s (%s): %s", pass, br.ID, br.Class, br.Result)
			}
		}
	}
	// Everything is still prepared.
	var n int
	if err := b.PGPool.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = ANY($1)", append(pgGIDs, lookalike.GID())).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d of 3 foreign PostgreSQL transactions left", n)
	}
	rows, err := b.MyDB.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for rows.Next() {
		var f, gl, bl int64
		var data []byte
		if err := rows.Scan(&f, &gl, &bl, &data); err != nil {
			t.Fatal(err)
		}
		if s := string(data); s == "foreign-"+sfx+"\x01" || s == "plain-"+sfx {
			found++
		}
	}
	rows.Close()
	if found != 2 {
		t.Errorf("%d of 2 foreign MariaDB transactions left", found)
	}
}

// The fence: once recovery has presumed a transaction aborted, its
// coordinator can no longer write a commit decision for it, even if it was
// only slow, not dead.
func TestFenceRefusesALateDecision(t *testing.T) {
	b := newBank(t, 4)
	ctx := context.Background()
	prepared := make(chan drivers.GlobalID, 1)
	resume := make(chan struct{})
	c := newCoord(t, b, func(cfg *xa.Config) {
		cfg.Hook = func(s xa.Step, info xa.StepInfo) {
			if s == xa.StepAllPrepared {
				prepared <- info.GTRID
				<-resume // the coordinator stalls between phase 1 and the decision
			}
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := b.Do(ctx, c, bank.Transfer{PGAccount: 7, MyAccount: 7, Amount: 10})
		done <- err
	}()
	g := <-prepared

	// A recovery that believes the coordinator dead (no Active, fence age
	// overridden) presumes the transaction aborted and rolls it back.
	zero := time.Duration(0)
	rec, err := recovery.New(recovery.Config{NodeID: c.NodeID(), Log: c.Log(), Resources: []drivers.Resource{b.PG, b.My}, MinAge: &zero, Settle: -1})
	if err != nil {
		t.Fatal(err)
	}
	rec.Pass(ctx, false)
	rep := rec.Pass(ctx, false)
	results := map[string]string{}
	for _, br := range rep.Branches {
		if br.Ours && br.XID.Global == g {
			results[br.Resource] = br.Result
		}
	}
	// PostgreSQL lets any session of the same role finish the branch.
	// MariaDB keeps it bound to the stalled coordinator's live session and
	// answers "busy": recovery must not, and does not, claim it finished.
	if results["pg"] != "rolled back" || results["mysql"] != "busy: retry later" {
		close(resume)
		<-done
		t.Fatalf("recovery results %v, want pg rolled back and mysql busy", results)
	}
	close(resume)
	err = <-done
	if !errors.Is(err, xa.ErrAborted) || !errors.Is(err, decisionlog.ErrFenced) {
		t.Fatalf("late decision: %v, want an abort by the fence", err)
	}
	if e, _ := c.Log().Lookup(g); e.State != decisionlog.StateAborted {
		t.Fatalf("log state %v, want aborted", e.State)
	}
	assertInvariants(t, b, c.NodeID())
}

// errDiscard, returned from sql.Conn.Raw, makes database/sql close the
// session instead of pooling it.
var errDiscard = driver.ErrBadConn
