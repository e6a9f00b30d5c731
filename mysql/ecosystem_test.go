package mysql

import (
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
	prepared := func() int64 {
		return e.queryInt("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'PREPARED_STMT_COUNT'")
	}
	before := prepared()

	b := e.begin(ctx)
	h := b.user
	st, err := h.PrepareContext(ctx, "INSERT INTO "+tbl+" VALUES (?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	if got := prepared(); got != before+1 {
		t.Errorf("PREPARED_STMT_COUNT %d, want %d: not prepared on the server", got, before+1)
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
	if got := prepared(); got != before {
		t.Errorf("PREPARED_STMT_COUNT %d after the branch, want %d: the statement was not closed", got, before)
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
