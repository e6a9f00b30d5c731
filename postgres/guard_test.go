package postgres_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
)

// Every way the handle takes SQL text refuses transaction control before
// anything is sent, also hidden in a multi-statement string, in any
// statement of a batch, behind pgx.NamedArgs or in a savepoint: the
// statements of a refused text never run (an INSERT before the COMMIT
// leaves no row), the branch goes on, and it commits with the global
// transaction.
func TestGuardRefusesBeforeSending(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_guard", "id BIGINT PRIMARY KEY")
	ins := func(id int) string { return fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, id) }

	b, h := e.begin(ctx)
	if _, err := h.Exec(ctx, ins(1)); err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error) {
		t.Helper()
		wantClass(t, what, err, drivers.ErrFailed)
		var ge *sqlguard.Error
		if !errors.Is(err, sqlguard.ErrTransactionControl) || !errors.As(err, &ge) || ge.Head == "" {
			t.Errorf("%s: %v, want a *sqlguard.Error naming the statement, matching sqlguard.ErrTransactionControl", what, err)
		}
	}
	// 100 and up: rows of refused texts, which must never exist.
	_, err := h.Exec(ctx, ins(100)+"; COMMIT")
	refused("Exec of INSERT; COMMIT", err)
	_, err = h.Exec(ctx, ins(101)+"; COMMIT AND CHAIN; "+ins(102))
	refused("Exec of INSERT; COMMIT AND CHAIN; INSERT", err)
	_, err = h.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1); COMMIT", 103)
	refused("Exec with an argument", err)
	_, err = h.Exec(ctx, "COMMIT", pgx.QueryExecModeSimpleProtocol)
	refused("Exec with a QueryExecMode", err)
	_, err = h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (@id); ROLLBACK", pgx.NamedArgs{"id": 104})
	refused("Exec with NamedArgs", err)
	_, err = h.Query(ctx, "SELECT 1; COMMIT")
	refused("Query", err)
	_, err = h.Query(ctx, "ROLLBACK", pgx.QueryResultFormats{pgx.TextFormatCode})
	refused("Query with QueryResultFormats", err)
	refused("QueryRow", h.QueryRow(ctx, "END").Scan(new(int)))
	_, err = h.Prepare(ctx, "xab_guard_stmt", "COMMIT")
	refused("Prepare", err)

	batch := &pgx.Batch{}
	batch.Queue(ins(105))
	batch.Queue("SELECT 1; COMMIT")
	batch.Queue(ins(106))
	br := h.SendBatch(ctx, batch)
	_, err = br.Exec()
	refused("the batch's first result", err)
	refused("the batch's Close", br.Close())
	batch = &pgx.Batch{}
	batch.Queue(ins(107))
	batch.Queue("INSERT INTO "+tbl+" VALUES (@id); PREPARE TRANSACTION 'x'", pgx.NamedArgs{"id": 108})
	refused("a batch with NamedArgs", h.SendBatch(ctx, batch).Close())

	err = pgx.BeginFunc(ctx, h, func(sp pgx.Tx) error {
		_, err := sp.Exec(ctx, "COMMIT")
		refused("Exec in a savepoint", err)
		refused("batch in a savepoint", sp.SendBatch(ctx, batch).Close())
		_, err = sp.Exec(ctx, ins(2))
		return err
	})
	if err != nil {
		t.Fatalf("savepoint after the refusals: %v", err)
	}

	// What the guard lets through runs, rewritten arguments included.
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (@id)", pgx.NamedArgs{"id": 3}); err != nil {
		t.Fatal(err)
	}
	batch = &pgx.Batch{}
	batch.Queue(ins(4))
	batch.Queue("INSERT INTO "+tbl+" VALUES (@id)", pgx.NamedArgs{"id": 5})
	batch.Queue("SAVEPOINT s")
	batch.Queue(ins(6))
	batch.Queue("ROLLBACK TO SAVEPOINT s")
	if err := h.SendBatch(ctx, batch).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Prepare(ctx, "xab_guard_ok", "INSERT INTO "+tbl+" VALUES ($1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Exec(ctx, "xab_guard_ok", 7); err != nil {
		t.Fatal(err)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 0 {
		t.Fatalf("%d rows visible before the global commit", n)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatalf("Prepare after the refusals: %v", err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id < 100"); n != 6 {
		t.Errorf("%d rows committed, want 6 (1, 2, 3, 4, 5, 7)", n)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id >= 100"); n != 0 {
		t.Errorf("%d rows of refused texts exist: something was sent", n)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM pg_prepared_xacts WHERE gid = 'x'"); n != 0 {
		t.Error("a refused PREPARE TRANSACTION prepared a transaction")
	}
	e.assertPoolClean()
}

// A refused first statement sends nothing, not even the branch's BEGIN;
// the branch begins with the next one, also when that one is pipelined
// behind BEGIN with pgx.NamedArgs rewritten by the guard.
func TestGuardFirstStatement(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_guard1", "id BIGINT PRIMARY KEY")
	b, h := e.begin(ctx)
	_, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (@id); COMMIT", pgx.NamedArgs{"id": 100})
	if !errors.Is(err, sqlguard.ErrTransactionControl) {
		t.Fatalf("first statement: %v, want sqlguard.ErrTransactionControl", err)
	}
	// No session of this test's server is inside a transaction: the
	// branch's BEGIN was not sent either.
	if n := e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'"); n != 0 {
		t.Errorf("%d sessions idle in a transaction after the refused first statement", n)
	}
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (@id)", pgx.NamedArgs{"id": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id = 1"); n != 1 {
		t.Errorf("row 1: %d, want 1", n)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id = 100"); n != 0 {
		t.Errorf("row 100 of the refused text: %d, want 0", n)
	}
	e.assertPoolClean()
}
