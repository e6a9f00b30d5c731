package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
)

// Savepoints run inside an XA branch on MariaDB, also after an error: the
// statements before the savepoint commit, those rolled back to it do not.
func TestSavepoints(t *testing.T) {
	e := newEnv(t, 2)
	tbl := e.table("sp")
	ctx := ctxT(t)
	b := e.begin(ctx)
	h := b.user
	ins := func(id int) string { return fmt.Sprintf("INSERT INTO %s VALUES (%d, 0)", tbl, id) }
	for _, st := range []struct {
		sql  string
		fail bool
	}{
		{ins(10), false},
		{"SAVEPOINT a", false},
		{ins(11), false},
		{"ROLLBACK TO SAVEPOINT a", false},
		{"SAVEPOINT b", false},
		{ins(10), true}, // duplicate key
		{"ROLLBACK TO b", false},
		{ins(12), false},
		{"RELEASE SAVEPOINT b", false},
	} {
		_, err := h.ExecContext(ctx, st.sql)
		if (err != nil) != st.fail {
			t.Fatalf("%s: %v", st.sql, err)
		}
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int64]int64{10: 1, 11: 0, 12: 1} {
		if got := e.rows(tbl, id); got != want {
			t.Errorf("row %d: %d, want %d", id, got, want)
		}
	}
}

// PrepareContext prepares on the pinned session; the statement runs only
// while the branch is active and is closed on the server when the session
// leaves the branch. The database/sql view nests BeginTx as savepoints, and
// COMMIT or ROLLBACK sent through it are refused by the guard, before they
// reach the server, without ending the branch.
func TestPrepareContextAndView(t *testing.T) {
	e := newEnv(t, 2)
	tbl := e.table("view")
	ctx := ctxT(t)
	// open: statements prepared and not yet closed on one session, read on
	// that session (the server-wide PREPARED_STMT_COUNT moves with every
	// other test running against the server). A query without arguments
	// uses the text protocol, so reading does not change what it reads.
	open := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) int64 {
		t.Helper()
		var n int64
		if err := q.QueryRowContext(ctx, `SELECT
			(SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'COM_STMT_PREPARE') -
			(SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'COM_STMT_CLOSE')`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	b := e.begin(ctx)
	h := b.user
	before := open(h.DB())
	st, err := h.PrepareContext(ctx, "INSERT INTO "+tbl+" VALUES (?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	if got := open(h.DB()); got != before+1 {
		t.Errorf("%d statements open on the pinned session, want %d: not prepared there", got, before+1)
	}
	for id := 20; id < 23; id++ {
		if _, err := st.ExecContext(ctx, id, id); err != nil {
			t.Fatal(err)
		}
	}
	var owner uint64
	if err := h.DB().QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&owner); err != nil || owner != b.owner {
		t.Fatalf("the view does not run on the pinned session: %d (owner %d), %v", owner, b.owner, err)
	}
	tx, err := h.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (?, 0)", 23); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (?, 0)", 20); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("rollback to savepoint: %v", err)
	}
	tx, err = h.DB().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (?, 0)", 24); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("release savepoint: %v", err)
	}
	if _, err := h.BeginTx(ctx, &sql.TxOptions{ReadOnly: true}); err == nil {
		t.Error("a read-only nested transaction was accepted")
	}
	for _, stmt := range []string{"COMMIT", "ROLLBACK", "START TRANSACTION"} {
		if _, err := h.DB().ExecContext(ctx, stmt); !errors.Is(err, sqlguard.ErrTransactionControl) {
			t.Errorf("%s inside the XA branch: %v, want sqlguard.ErrTransactionControl", stmt, err)
		}
		if _, err := h.DB().PrepareContext(ctx, stmt); !errors.Is(err, sqlguard.ErrTransactionControl) {
			t.Errorf("PrepareContext(%s) inside the XA branch: %v, want sqlguard.ErrTransactionControl", stmt, err)
		}
	}
	var n int64
	rows, err := h.DB().QueryContext(ctx, "SELECT id, v FROM "+tbl+" WHERE id >= ? ORDER BY id", 20)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if err := rows.Close(); err != nil || n != 4 {
		t.Fatalf("rows %d, %v; want 4 (20, 21, 22, 24)", n, err)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = st.ExecContext(ctx, 30, 0)
	wantKind(t, "prepared statement after Prepare", err, drivers.ErrFailed)
	_, err = h.DB().ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (31, 0)")
	wantKind(t, "view after Prepare", err, drivers.ErrFailed)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The branch's session went back to the pool (or was closed, which
	// closes its statements too): find it among the pool's connections.
	for i := 0; i < 2; i++ {
		c, err := e.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var id uint64
		if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
			t.Fatal(err)
		}
		if id != b.owner {
			continue
		}
		if got := open(c); got != before {
			t.Errorf("%d statements open on the session after the branch, want %d: the statement was not closed", got, before)
		}
	}
	_ = b.Close()
	if err := h.DB().PingContext(ctx); err == nil {
		t.Error("the view is still open after the branch closed")
	}
	for id, want := range map[int64]int64{20: 1, 22: 1, 23: 0, 24: 1, 30: 0, 31: 0} {
		if got := e.rows(tbl, id); got != want {
			t.Errorf("row %d: %d, want %d", id, got, want)
		}
	}
}
