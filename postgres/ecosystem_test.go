package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
	"github.com/xabridge/xabridge/postgres"
)

// The handle is a pgx.Tx: Begin is a savepoint (pgx.BeginFunc rolls back
// to it on error), Commit and Rollback of the outermost level are refused
// without touching the branch.
func TestHandleIsPgxTx(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_pgxtx", "id BIGINT PRIMARY KEY")
	b, h := e.begin(ctx)
	var tx pgx.Tx = h

	if _, err := tx.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
		if _, err := sp.Exec(ctx, "INSERT INTO "+tbl+" VALUES (2)"); err != nil {
			return err
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("BeginFunc: %v", err)
	}
	// A failing statement inside a savepoint, rolled back to, leaves the
	// branch usable.
	err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
		_, err := sp.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)") // duplicate key
		return err
	})
	wantCode(t, "duplicate in savepoint", err, "23505")
	// Nested savepoints, committed.
	err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
		return pgx.BeginFunc(ctx, sp, func(sp2 pgx.Tx) error {
			_, err := sp2.Exec(ctx, "INSERT INTO "+tbl+" VALUES (3)")
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Exec(ctx, "SELECT 1"); !errors.Is(err, pgx.ErrTxClosed) {
		t.Errorf("Exec on a released savepoint: %v, want ErrTxClosed", err)
	}
	if err := sp.Rollback(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Errorf("Rollback after Commit: %v, want ErrTxClosed", err)
	}

	for name, end := range map[string]func(context.Context) error{"Commit": tx.Commit, "Rollback": tx.Rollback} {
		err := end(ctx)
		wantClass(t, name, err, drivers.ErrFailed)
		if !errors.Is(err, postgres.ErrTxControl) {
			t.Errorf("%s: %v does not wrap ErrTxControl", name, err)
		}
	}
	if tx.Conn() != nil {
		t.Error("Conn exposes the branch's connection")
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 2 {
		t.Errorf("%d rows, want 2 (1 and 3)", n)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id = 3"); n != 1 {
		t.Error("the nested savepoint's row is missing")
	}
	e.assertPoolClean()
}

// The database/sql view runs on the branch's session inside its
// transaction, converts values as pgx's stdlib does, nests BeginTx as
// savepoints, keeps the guard, and dies with the branch.
func TestSQLView(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_sqlview", "id BIGINT PRIMARY KEY, name TEXT, amount NUMERIC(10,2), at TIMESTAMPTZ, ok BOOLEAN, data BYTEA")
	b, h := e.begin(ctx)
	db := h.DB()
	at := time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC)
	res, err := db.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES ($1, $2, $3, $4, $5, $6), (2, NULL, NULL, NULL, NULL, NULL)", 1, "one", "12.50", at, true, []byte{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 2 {
		t.Errorf("RowsAffected %d", n)
	}
	var (
		name   sql.NullString
		amount string
		gotAt  time.Time
		ok     bool
		data   []byte
		id     int64
	)
	if err := h.QueryRowContext(ctx, "SELECT id, name, amount, at, ok, data FROM "+tbl+" WHERE id = $1", 1).Scan(&id, &name, &amount, &gotAt, &ok, &data); err != nil {
		t.Fatal(err)
	}
	if id != 1 || name.String != "one" || amount != "12.50" || !gotAt.Equal(at) || !ok || string(data) != "\x00\x01" {
		t.Errorf("row: %v %v %v %v %v %v", id, name, amount, gotAt, ok, data)
	}
	// The server's errors are the query's, and the session stays the
	// branch's: the pid is the handle's.
	if _, err := db.QueryContext(ctx, "SELECT nope FROM "+tbl); err == nil {
		t.Fatal("a bad query returned no error")
	}
	tx, err := db.BeginTx(ctx, nil) // after the failed query: a savepoint cannot open in an aborted block
	if err == nil {
		t.Fatal("BeginTx in an aborted block succeeded")
	}
	_ = tx
	// Recover with the pgx side's savepoint API is not possible any more
	// (the block is aborted): start over on a new branch.
	_ = b.Rollback(ctx)
	_ = b.Close()

	b, h = e.begin(ctx)
	db = h.DB()
	if _, err := db.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 10); err != nil {
		t.Fatal(err)
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 10); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback to savepoint: %v", err)
	}
	tx, err = h.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 11); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("release savepoint: %v", err)
	}
	if _, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable}); err == nil {
		t.Error("BeginTx with an isolation level accepted")
	}
	var pidView, pidHandle int64
	if err := db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pidView); err != nil {
		t.Fatal(err)
	}
	pidHandle = backendPID(ctx, t, h)
	if pidView != pidHandle {
		t.Errorf("view pid %d, handle pid %d", pidView, pidHandle)
	}
	st, err := h.PrepareContext(ctx, "SELECT COUNT(*) FROM "+tbl+" WHERE id >= $1")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	if err := st.QueryRowContext(ctx, 10).Scan(&n); err != nil || n != 2 {
		t.Fatalf("prepared count: %d %v", n, err)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	// Once prepared, nothing runs through the view.
	_, err = db.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (12)")
	wantClass(t, "view Exec after Prepare", err, drivers.ErrFailed)
	wantClass(t, "Stmt after Prepare", st.QueryRowContext(ctx, 10).Scan(&n), drivers.ErrFailed)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if err := db.PingContext(ctx); err == nil {
		t.Error("the view is still open after the branch closed")
	}
	if got := e.queryInt("SELECT COUNT(*) FROM " + tbl); got != 2 {
		t.Errorf("%d rows, want 2 (10 and 11)", got)
	}
	e.assertPoolClean()
}

// Transaction control sent through the view is refused like through the
// handle, before it is sent: plain, prepared (refused at PrepareContext)
// or in a savepoint's *sql.Tx; the branch goes on and commits.
func TestSQLViewGuard(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_sqlguard", "id BIGINT PRIMARY KEY")
	for i, stmt := range []string{"COMMIT", "ROLLBACK", "COMMIT AND CHAIN", "ROLLBACK AND CHAIN",
		"PREPARE TRANSACTION 'xab_test_sqlview_" + e.sfx + "'", "SELECT 1; COMMIT", "BEGIN"} {
		t.Run(stmt, func(t *testing.T) {
			b, h := e.begin(ctx)
			if _, err := h.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, i)); err != nil {
				t.Fatal(err)
			}
			db := h.DB()
			refused := func(what string, err error) {
				t.Helper()
				wantClass(t, what, err, drivers.ErrFailed)
				if !errors.Is(err, sqlguard.ErrTransactionControl) {
					t.Errorf("%s: %v, want sqlguard.ErrTransactionControl", what, err)
				}
			}
			_, err := db.ExecContext(ctx, stmt)
			refused("ExecContext", err)
			_, err = db.QueryContext(ctx, stmt)
			refused("QueryContext", err)
			refused("QueryRowContext", db.QueryRowContext(ctx, stmt).Scan(new(int)))
			_, err = db.PrepareContext(ctx, stmt)
			refused("PrepareContext", err)
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.ExecContext(ctx, stmt)
			refused("ExecContext in a *sql.Tx", err)
			if err := tx.Commit(); err != nil {
				t.Fatalf("release savepoint after the refusal: %v", err)
			}
			if _, err := b.Prepare(ctx); err != nil {
				t.Fatalf("Prepare after the refused %q: %v", stmt, err)
			}
			if err := b.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			_ = b.Close()
			if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, i)); n != 1 {
				t.Errorf("row %d: %d, want 1 (committed with the branch)", i, n)
			}
			if n := e.queryInt("SELECT COUNT(*) FROM pg_prepared_xacts WHERE gid = 'xab_test_sqlview_" + e.sfx + "'"); n != 0 {
				t.Error("the refused PREPARE TRANSACTION prepared a transaction")
			}
			e.assertPoolClean()
		})
	}
}
