package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/drivers/sqlguard"
	"github.com/xabridge/xabridge/postgres"
)

// An aborted transaction block answers PREPARE TRANSACTION with the tag
// ROLLBACK and only a WARNING; the adapter must read the tag.
func TestPrepareInAbortedBlockIsRefused(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_tag", "id BIGINT PRIMARY KEY")

	b, h := e.begin(ctx)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("SELECT 1/0 succeeded")
	}
	_, err := b.Prepare(ctx)
	wantClass(t, "Prepare", err, drivers.ErrRefused)
	if !strings.Contains(err.Error(), "aborted") {
		t.Errorf("error does not say the block was aborted: %v", err)
	}
	if n := e.preparedCount(b.XID().GID()); n != 0 {
		t.Errorf("%d prepared transactions with our gid", n)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Errorf("Rollback after refusal: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}

	// The same for a one-phase COMMIT, which also answers ROLLBACK.
	b2, h2 := e.begin(ctx)
	if _, err := h2.Exec(ctx, "INSERT INTO "+tbl+" VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("SELECT 1/0 succeeded")
	}
	wantClass(t, "CommitOnePhase", b2.CommitOnePhase(ctx), drivers.ErrRefused)
	_ = b2.Close()
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 0 {
		t.Errorf("%d rows committed", n)
	}
	e.assertPoolClean()
}

// A deferred constraint is checked at PREPARE TRANSACTION (or COMMIT): the
// server answers with an ERROR and rolls the branch back.
func TestDeferredConstraintFailsAtPrepare(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_defer", "id BIGINT PRIMARY KEY, k BIGINT, UNIQUE (k) DEFERRABLE INITIALLY DEFERRED")

	for _, onePhase := range []bool{false, true} {
		b, h := e.begin(ctx)
		for id := range 2 {
			// Both inserts succeed: the unique check waits for the end.
			if _, err := h.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d, 7)", tbl, id+1)); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		if onePhase {
			err = b.CommitOnePhase(ctx)
		} else {
			_, err = b.Prepare(ctx)
		}
		wantClass(t, fmt.Sprintf("end (one-phase %v)", onePhase), err, drivers.ErrRefused)
		wantCode(t, "deferred unique violation", err, "23505")
		if errors.Is(err, drivers.ErrRetryable) {
			t.Errorf("a unique violation is not retryable: %v", err)
		}
		if n := e.preparedCount(b.XID().GID()); n != 0 {
			t.Errorf("%d prepared transactions with our gid", n)
		}
		if err := b.Rollback(ctx); err != nil {
			t.Errorf("Rollback after refusal: %v", err)
		}
		_ = b.Close()
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 0 {
		t.Errorf("%d rows committed", n)
	}
	e.assertPoolClean()
}

// Phase 2 works from any connection of the same database and role, and the
// branch itself falls back to a fresh connection when its own died after
// PREPARE.
func TestCommitPreparedFromFreshConnection(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_fresh", "id BIGINT PRIMARY KEY")

	// Another pool, so the commit surely runs on another session.
	other := postgres.New("pg-test", newPool(t, e.url, 2))
	b, h := e.begin(ctx)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("Prepare: %v %v", v, err)
	}
	if err := other.CommitPrepared(ctx, b.XID()); err != nil {
		t.Fatalf("CommitPrepared from another pool: %v", err)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 1 {
		t.Errorf("rows: %d, want 1", n)
	}
	// The branch's own Commit now finds nothing to commit: done.
	if err := b.Commit(ctx); err != nil {
		t.Errorf("Commit after a commit by XID: %v", err)
	}
	_ = b.Close()

	// The pinned session dies between PREPARE and COMMIT PREPARED: one
	// Commit call still commits, from a fresh connection.
	b2, h2 := e.begin(ctx)
	pid := backendPID(ctx, t, h2)
	if _, err := h2.Exec(ctx, "INSERT INTO "+tbl+" VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	e.terminate(pid)
	if err := b2.Commit(ctx); err != nil {
		t.Fatalf("Commit after the pinned session died: %v", err)
	}
	_ = b2.Close()
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 2 {
		t.Errorf("rows: %d, want 2", n)
	}
	if n := e.preparedCount(b2.XID().GID()); n != 0 {
		t.Errorf("still prepared")
	}
	e.assertPoolClean()
}

// pg_prepared_xacts lists every database's prepared transactions. One in
// another database is never Ours, even when its gid decodes, and can't be
// finished from here.
func TestRecoverOtherDatabaseIsForeign(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	db := "xab_conf_other_" + e.sfx
	e.exec("CREATE DATABASE " + db)
	t.Cleanup(func() { e.exec("DROP DATABASE IF EXISTS " + db) })
	otherURL := strings.Replace(e.url, "/xabridge?", "/"+db+"?", 1)
	if otherURL == e.url {
		t.Fatalf("cannot derive a URL for database %s from %s", db, e.url)
	}

	xid := drivertest.NewXID()
	plain := "plain-gid-" + e.sfx
	// Registered after the DROP DATABASE cleanup, so they run before it.
	t.Cleanup(prepareRaw(t, otherURL, xid.GID()))
	t.Cleanup(prepareRaw(t, otherURL, plain))

	ps, err := e.r.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, p := range ps {
		switch p.ID {
		case xid.GID():
			seen++
			if p.Ours || p.XID != xid {
				t.Errorf("gid in another database: %+v; want not ours, with its XID (recovery keeps its decision while it is listed)", p)
			}
			if !strings.Contains(p.Note, "other database") || p.Database != db {
				t.Errorf("entry %+v: want Note about the other database and Database %q", p, db)
			}
		case plain:
			seen++
			if p.Ours || p.Note != "" {
				t.Errorf("plain foreign gid: %+v", p)
			}
		}
	}
	if seen != 2 {
		t.Fatalf("Recover listed %d of the 2 prepared transactions in %s", seen, db)
	}
	// Finishing it from here fails for good and leaves it alone.
	wantClass(t, "CommitPrepared from another database", e.r.CommitPrepared(ctx, xid), drivers.ErrFailed)
	wantClass(t, "RollbackPrepared from another database", e.r.RollbackPrepared(ctx, xid), drivers.ErrFailed)
	if n := e.preparedCount(xid.GID()); n != 1 {
		t.Errorf("the other database's prepared transaction was touched (%d left)", n)
	}
	e.assertPoolClean()
}

// Gids that look almost like ours are foreign, both to the codec and to
// Recover against the real server.
func TestHostileGIDsAreNeverOurs(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	valid := drivertest.NewXID().GID() // xab1:conftest.<begin>.<seq>.<deadline>:00
	g := drivertest.NewXID().Global
	hostile := []string{
		valid + " ",
		" " + valid,
		strings.ToUpper(valid),
		valid + "'",
		valid + "'; DROP TABLE x; --",
		valid + ":00",
		valid + "0",
		strings.TrimSuffix(valid, ":00"),
		strings.Replace(valid, "conftest", "conf_test", 1),
		strings.Replace(valid, "conftest", "-conftest", 1),
		strings.Replace(valid, "conftest", "сonftest", 1), // Cyrillic с
		strings.Replace(valid, "xab1:", "xab2:", 1),
		strings.Replace(valid, ":00", ":0g", 1),
		strings.Replace(valid, ".", "..", 1),
		valid + "\n",
		"xab1:" + g.Node() + "." + strings.Repeat("f", 12) + ".00000000.000000000000:00", // deadline before begin
		"xab1:" + strings.Repeat("a", 25) + strings.TrimPrefix(valid, "xab1:conftest"),
		"xab1:" + strings.Repeat("z", 150) + fmt.Sprintf("%08x", rand.Uint32()),
		"xab1::" + fmt.Sprintf("%08x", rand.Uint32()),
	}
	for _, gid := range hostile {
		if _, ok := drivers.ParseGID(gid); ok {
			t.Errorf("ParseGID(%q) accepted a hostile gid", gid)
		}
		t.Cleanup(prepareRaw(t, e.url, gid))
	}
	ps, err := e.r.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, p := range ps {
		for _, gid := range hostile {
			if p.ID == gid {
				found++
				if p.Ours {
					t.Errorf("Recover: hostile gid %q is Ours", gid)
				}
			}
		}
	}
	if found != len(hostile) {
		t.Errorf("Recover listed %d of %d hostile gids", found, len(hostile))
	}
}

// The branch's backend dies while the transaction is idle, before PREPARE.
//
// Expected class: ErrInDoubt. The adapter cannot tell this case from a
// backend that died while executing PREPARE: the write of PREPARE
// TRANSACTION succeeds (the socket only learns of the close when it reads),
// and the read then returns the FATAL "terminating connection due to
// administrator command" (or a reset). A FATAL in answer to PREPARE can
// also come after the prepare was made durable (it is then reported during
// the synchronous-replication wait), so reading it as "refused" would be a
// guess. In doubt is the only answer that is never wrong; Rollback then
// settles it, and here it finds nothing prepared.
func TestConnectionLostBeforePrepareIsInDoubt(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_lost", "id BIGINT PRIMARY KEY")
	b, h := e.begin(ctx)
	pid := backendPID(ctx, t, h)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	e.terminate(pid)
	_, err := b.Prepare(ctx)
	wantClass(t, "Prepare on a dead session", err, drivers.ErrInDoubt)
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback of the in-doubt branch: %v", err)
	}
	if err := b.Commit(ctx); !errors.Is(err, drivers.ErrFailed) {
		t.Errorf("Commit after Rollback: %v, want ErrFailed", err)
	}
	_ = b.Close()
	if n := e.preparedCount(b.XID().GID()); n != 0 {
		t.Errorf("prepared: %d", n)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 0 {
		t.Errorf("rows: %d", n)
	}
	e.assertPoolClean()
}

// blockingPrepare sets up a table whose deferred constraint trigger runs at
// PREPARE TRANSACTION and waits for an advisory lock the test holds, so the
// test controls exactly when PREPARE can finish. The trigger swallows query
// cancellation and keeps waiting, like a server that finishes a PREPARE
// whose client has gone. It returns the table, and an unlock function.
func (e *env) blockingPrepare() (table string, unlock func()) {
	e.t.Helper()
	key := rand.Int64()
	fn := "xab_pg_wait_" + e.sfx
	table = "xab_pg_block_" + e.sfx
	e.exec(fmt.Sprintf(`CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	LOOP
		BEGIN
			PERFORM pg_advisory_xact_lock(%d);
			RETURN NULL;
		EXCEPTION WHEN query_canceled THEN
			-- keep waiting
		END;
	END LOOP;
END $$`, fn, key))
	e.exec("CREATE TABLE " + table + " (id BIGINT PRIMARY KEY)")
	e.exec(fmt.Sprintf("CREATE CONSTRAINT TRIGGER %s AFTER INSERT ON %s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION %s()", fn, table, fn))
	e.t.Cleanup(func() {
		e.exec("DROP TABLE IF EXISTS " + table)
		e.exec("DROP FUNCTION IF EXISTS " + fn + "()")
	})

	holder, err := e.admin.Acquire(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := holder.Exec(context.Background(), "SELECT pg_advisory_lock($1)", key); err != nil {
		e.t.Fatal(err)
	}
	var once sync.Once
	unlock = func() {
		once.Do(func() {
			if _, err := holder.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", key); err != nil {
				e.t.Error(err)
			}
			holder.Release()
		})
	}
	e.t.Cleanup(unlock)
	return table, unlock
}

// waitUntilLockWait waits until backend pid waits on a lock.
func (e *env) waitUntilLockWait(pid int64) {
	e.t.Helper()
	e.waitFor(fmt.Sprintf("backend %d to wait on a lock", pid), func() bool {
		return e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", pid) == 1
	})
}

// The backend is killed while it executes PREPARE TRANSACTION: in doubt;
// Rollback then finds it was not prepared.
func TestConnectionLostMidPrepareIsInDoubt(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl, unlock := e.blockingPrepare()
	b, h := e.begin(ctx)
	pid := backendPID(ctx, t, h)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		e.waitUntilLockWait(pid)
		e.terminate(pid)
	})
	_, err := b.Prepare(ctx)
	wg.Wait()
	unlock()
	wantClass(t, "Prepare interrupted by pg_terminate_backend", err, drivers.ErrInDoubt)
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	_ = b.Close()
	if n := e.preparedCount(b.XID().GID()); n != 0 {
		t.Errorf("prepared: %d", n)
	}
	e.assertPoolClean()
}

// The client gives up on PREPARE (its context ends), but the server goes
// on and prepares the transaction after the connection is dropped. A
// Rollback that came in between must not take "does not exist" for "done":
// it answers ErrBusy while the old backend still runs PREPARE, and rolls
// the branch back once it is prepared.
func TestPrepareFinishingAfterDisconnectIsNotLost(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl, unlock := e.blockingPrepare()
	b, h := e.begin(ctx)
	pid := backendPID(ctx, t, h)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Runs first on failure: let the PREPARE finish, then remove it.
		unlock()
		e.waitFor("the old backend to exit", func() bool {
			return e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0
		})
		if e.preparedCount(b.XID().GID()) == 1 {
			e.exec("ROLLBACK PREPARED '" + b.XID().GID() + "'")
		}
	})
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		e.waitUntilLockWait(pid)
		cancel()
	})
	_, err := b.Prepare(pctx)
	wg.Wait()
	wantClass(t, "Prepare with its context cancelled mid-way", err, drivers.ErrInDoubt)

	// The old backend is still inside PREPARE, waiting for the lock.
	err = b.Rollback(ctx)
	wantClass(t, "Rollback while the old backend still prepares", err, drivers.ErrBusy)
	if n := e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", pid); n != 1 {
		t.Fatalf("test premise: backend %d should still run", pid)
	}

	unlock()
	e.waitFor("the abandoned PREPARE to complete", func() bool { return e.preparedCount(b.XID().GID()) == 1 })
	e.waitFor("Rollback to succeed", func() bool {
		err := b.Rollback(ctx)
		if err != nil && !errors.Is(err, drivers.ErrBusy) {
			t.Fatalf("Rollback: %v", err)
		}
		return err == nil
	})
	_ = b.Close()
	if n := e.preparedCount(b.XID().GID()); n != 0 {
		t.Errorf("still prepared: %d", n)
	}
	e.assertPoolClean()
}

// Only queries, and no transaction id assigned: read-only. A query that
// writes or locks rows assigns one and makes the branch prepare.
func TestReadOnlyVoteFromQueries(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_ro", "id BIGINT PRIMARY KEY")
	e.exec("INSERT INTO " + tbl + " VALUES (1)")

	cases := []struct {
		sql  string
		vote drivers.Vote
	}{
		{"SELECT COUNT(*) FROM " + tbl, drivers.VoteReadOnly},
		{"SELECT id FROM " + tbl + " WHERE id = 1 FOR UPDATE", drivers.VoteCommit},
		{"INSERT INTO " + tbl + " VALUES (2) RETURNING id", drivers.VoteCommit},
	}
	for _, c := range cases {
		b, h := e.begin(ctx)
		var n int64
		if err := h.QueryRow(ctx, c.sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		v, err := b.Prepare(ctx)
		if err != nil || v != c.vote {
			t.Errorf("%s: vote %v %v, want %v", c.sql, v, err, c.vote)
		}
		if v == drivers.VoteCommit {
			if err := b.Commit(ctx); err != nil {
				t.Error(err)
			}
		} else if n := e.preparedCount(b.XID().GID()); n != 0 {
			t.Errorf("%s: read-only branch left prepared", c.sql)
		}
		_ = b.Close()
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 2 {
		t.Errorf("rows: %d, want 2", n)
	}
	// A failed query in an otherwise read-only branch: refused, not read-only.
	b, h := e.begin(ctx)
	if err := h.QueryRow(ctx, "SELECT 1/0").Scan(new(int)); err == nil {
		t.Fatal("SELECT 1/0 succeeded")
	}
	_, err := b.Prepare(ctx)
	wantClass(t, "Prepare after a failed query", err, drivers.ErrRefused)
	_ = b.Close()
	e.assertPoolClean()
}

// The handle cannot run statements once the branch is prepared or closed;
// application SQL that would end the transaction is refused before it is
// sent, and caught afterwards should it get past the guard.
func TestHandleIsSealed(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_sealed", "id BIGINT PRIMARY KEY")

	b, h := e.begin(ctx)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if h.XID() != b.XID() {
		t.Errorf("handle XID %v, branch %v", h.XID(), b.XID())
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (2)")
	wantClass(t, "Exec after Prepare", err, drivers.ErrFailed)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	wantClass(t, "QueryRow after Close", h.QueryRow(ctx, "SELECT 1").Scan(new(int)), drivers.ErrFailed)
	_, err = h.Query(ctx, "SELECT 1")
	wantClass(t, "Query after Close", err, drivers.ErrFailed)
	wantClass(t, "SendBatch after Close", h.SendBatch(ctx, &pgx.Batch{}).Close(), drivers.ErrFailed)
	_, err = h.CopyFrom(ctx, pgx.Identifier{tbl}, []string{"id"}, pgx.CopyFromRows([][]any{{int64(3)}}))
	wantClass(t, "CopyFrom after Close", err, drivers.ErrFailed)

	// Batches and COPY run in the branch while it is active.
	b2, h2 := e.begin(ctx)
	batch := &pgx.Batch{}
	batch.Queue("INSERT INTO " + tbl + " VALUES (10)")
	batch.Queue("INSERT INTO " + tbl + " VALUES (11)")
	if err := h2.SendBatch(ctx, batch).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.CopyFrom(ctx, pgx.Identifier{tbl}, []string{"id"}, pgx.CopyFromRows([][]any{{int64(12)}})); err != nil {
		t.Fatal(err)
	}
	rows, err := h2.Query(ctx, "SELECT id FROM "+tbl+" WHERE id >= 10 ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	if rows.Conn() != nil {
		t.Error("Rows.Conn exposes the branch's connection")
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(ids) != 3 {
		t.Fatalf("rows in branch: %v %v", ids, err)
	}
	// A batch that begins its own transaction is refused.
	tb := &pgx.Batch{}
	tb.BeginTx(pgx.TxOptions{})
	tb.Queue("SELECT 1")
	wantClass(t, "SendBatch with BeginTx", h2.SendBatch(ctx, tb).Close(), drivers.ErrFailed)
	if err := b2.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b2.Close()
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id >= 10"); n != 3 {
		t.Errorf("rows: %d, want 3", n)
	}

	// Transaction control sent through the handle is refused before it
	// reaches the server, alone, inside a multi-statement string, hidden
	// behind other statements: the branch is untouched, goes on, and
	// commits with the global transaction.
	for i, stmt := range []string{"COMMIT", "COMMIT AND CHAIN", "ROLLBACK AND CHAIN", "COMMIT; BEGIN", "BEGIN",
		"SELECT 1; COMMIT", "SELECT 1; COMMIT; SELECT 2", "/* c */ end", "PREPARE TRANSACTION 'x'"} {
		first, after := 40+2*i, 41+2*i
		b3, h3 := e.begin(ctx)
		if _, err := h3.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, first)); err != nil {
			t.Fatal(err)
		}
		_, err = h3.Exec(ctx, stmt)
		wantClass(t, "Exec("+stmt+")", err, drivers.ErrFailed)
		if !errors.Is(err, sqlguard.ErrTransactionControl) {
			t.Errorf("Exec(%q) = %v, want sqlguard.ErrTransactionControl", stmt, err)
		}
		if _, err := h3.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, after)); err != nil {
			t.Fatalf("Exec after the refused %q: %v", stmt, err)
		}
		if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id IN (%d, %d)", tbl, first, after)); n != 0 {
			t.Errorf("%s: %d rows visible before the commit", stmt, n)
		}
		if _, err := b3.Prepare(ctx); err != nil {
			t.Fatalf("Prepare after the refused %q: %v", stmt, err)
		}
		if err := b3.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		_ = b3.Close()
		if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id IN (%d, %d)", tbl, first, after)); n != 2 {
			t.Errorf("%s: %d rows committed, want 2", stmt, n)
		}
		e.assertPoolClean()
	}

	// The second line of defence, for a statement the guard would miss
	// (here: the guard turned off): transaction control that reached the
	// server escapes the global transaction: reported at once, and nothing
	// after it runs, whether the
	// session is left idle (COMMIT) or inside a new transaction (AND CHAIN,
	// "COMMIT; BEGIN"), so that no later work commits or prepares apart
	// from what the statement itself already did.
	for i, stmt := range []string{"COMMIT", "COMMIT AND CHAIN", "ROLLBACK AND CHAIN", "COMMIT; BEGIN", "BEGIN"} {
		first, after := 20+2*i, 21+2*i
		b3, h3 := e.begin(ctx)
		postgres.SkipGuardForTest(h3)
		if _, err := h3.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, first)); err != nil {
			t.Fatal(err)
		}
		_, err = h3.Exec(ctx, stmt)
		wantClass(t, "Exec("+stmt+")", err, drivers.ErrFailed)
		if errors.Is(err, sqlguard.ErrTransactionControl) {
			t.Errorf("Exec(%q) with the guard off = %v: the guard answered", stmt, err)
		}
		_, err = h3.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, after))
		wantClass(t, "Exec after "+stmt, err, drivers.ErrFailed)
		_, err = b3.Prepare(ctx)
		wantClass(t, "Prepare after "+stmt, err, drivers.ErrFailed)
		if err := b3.Rollback(ctx); err != nil {
			t.Error(err)
		}
		_ = b3.Close()
		if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, after)); n != 0 {
			t.Errorf("%s: a statement after the escape committed", stmt)
		}
		if stmt == "BEGIN" {
			// Inside the branch's transaction a BEGIN changes nothing; it
			// is refused all the same, and the branch rolled back.
			if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, first)); n != 0 {
				t.Errorf("BEGIN: the branch's earlier work committed")
			}
		}
		e.assertPoolClean()
	}
}

// Lock timeouts, deadlocks and serialization failures in application
// statements are ErrRetryable and keep the *pgconn.PgError.
func TestRetryableStatementErrors(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_retry", "id BIGINT PRIMARY KEY, v BIGINT")
	e.exec("INSERT INTO " + tbl + " VALUES (1, 0)")

	holder, hh := e.begin(ctx)
	if _, err := hh.Exec(ctx, "UPDATE "+tbl+" SET v = 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	victim, vh := e.begin(ctx)
	if _, err := vh.Exec(ctx, "SET LOCAL lock_timeout = '50ms'"); err != nil {
		t.Fatal(err)
	}
	_, err := vh.Exec(ctx, "UPDATE "+tbl+" SET v = 2 WHERE id = 1")
	wantClass(t, "UPDATE of a locked row", err, drivers.ErrRetryable)
	wantCode(t, "lock timeout", err, "55P03")
	_ = victim.Rollback(ctx)
	_ = victim.Close()
	_ = holder.Rollback(ctx)
	_ = holder.Close()
	e.assertPoolClean()
}

// WithTxOptions sets the branch's isolation level; bad options fail Begin.
func TestTxOptions(t *testing.T) {
	e := newEnv(t, postgres.WithTxOptions(pgx.TxOptions{IsoLevel: pgx.Serializable}))
	ctx := ctxT(t)
	_, h := e.begin(ctx)
	var iso string
	if err := h.QueryRow(ctx, "SHOW transaction_isolation").Scan(&iso); err != nil {
		t.Fatal(err)
	}
	if iso != "serializable" {
		t.Errorf("isolation %q, want serializable", iso)
	}

	bad := postgres.New("pg-bad", e.pool, postgres.WithTxOptions(pgx.TxOptions{IsoLevel: "read committed; DROP TABLE x"}))
	_, err := bad.Begin(ctx, drivertest.NewXID())
	wantClass(t, "Begin with a bad isolation level", err, drivers.ErrFailed)
}

// Enlist hands back the handle of the branch the transaction began.
func TestEnlist(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tx := &fakeTx{}
	h1, err := e.r.Enlist(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := e.r.Enlist(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	if h1.XID() != h2.XID() || h1.XID() != tx.b.XID() {
		t.Errorf("Enlist twice gave XIDs %v and %v, branch %v", h1.XID(), h2.XID(), tx.b.XID())
	}
	_ = tx.b.Rollback(ctx)
	_ = tx.b.Close()

	// A branch of another resource is refused.
	other := postgres.New("pg-other", e.pool)
	ob, err := other.Begin(ctx, drivertest.NewXID())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ob.Rollback(ctx); _ = ob.Close() }()
	_, err = e.r.Enlist(ctx, &fakeTx{b: ob})
	wantClass(t, "Enlist with another resource's branch", err, drivers.ErrFailed)
}

// Opening by URL goes through the registry for both schemes; errors never
// show the password.
func TestOpenAndRedaction(t *testing.T) {
	ctx := ctxT(t)
	url := newEnv(t).url
	for _, scheme := range []string{"postgres", "postgresql"} {
		u := scheme + strings.TrimPrefix(url, strings.SplitN(url, "://", 2)[0])
		r, closer, err := drivers.Open(ctx, "pg-open", u)
		if err != nil {
			t.Fatalf("Open(%s): %v", scheme, err)
		}
		if r.Name() != "pg-open" {
			t.Errorf("Name() = %q", r.Name())
		}
		if _, err := r.Recover(ctx); err != nil {
			t.Errorf("Recover via %s: %v", scheme, err)
		}
		if err := r.(*postgres.Resource).Check(ctx); err != nil {
			t.Errorf("Check: %v", err)
		}
		_ = closer.Close()
	}

	const pw = "s3cr3t-Pw"
	bad := []string{
		"postgres://u:" + pw + "@127.0.0.1:5432/db?sslmode=bogus",
		"postgres://u:" + pw + "@127.0.0.1:notaport/db",
		"postgres://u@127.0.0.1:5432/db?password=" + pw + "&sslmode=bogus",
		"postgres://u:" + pw + "@[::1/db",
		"host=127.0.0.1 password=" + pw + " sslmode=bogus",
	}
	for _, u := range bad {
		_, _, err := drivers.Open(ctx, "pg", u)
		if err == nil {
			t.Errorf("Open(%q) succeeded", u)
			continue
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("error shows the password: %v", err)
		}
		_, err = postgres.NewPool(ctx, u)
		if err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("NewPool(%q): %v", u, err)
		}
	}

	// A server that is not there: the error comes at first use, classed
	// retryable, without the password.
	r, closer, err := drivers.Open(ctx, "pg-down", "postgres://u:"+pw+"@127.0.0.1:1/db?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	_, err = r.Begin(ctx, drivertest.NewXID())
	wantClass(t, "Begin on a closed port", err, drivers.ErrRetryable)
	if strings.Contains(err.Error(), pw) {
		t.Errorf("error shows the password: %v", err)
	}
	_, err = r.Recover(ctx)
	if err == nil || strings.Contains(err.Error(), pw) {
		t.Errorf("Recover on a closed port: %v", err)
	}
}

// Branches of one resource in parallel with a pool smaller than their
// number: branches wait for connections, none deadlocks or leaks.
func TestSmallPoolManyBranches(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_small", "id BIGINT PRIMARY KEY")
	r := postgres.New("pg-small", newPool(t, e.url, 2))
	const n = 12
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			b, err := r.Begin(ctx, drivertest.NewXID())
			if err != nil {
				errs[i] = err
				return
			}
			defer b.Close()
			h, err := handleOf(ctx, r, b)
			if err == nil {
				_, err = h.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, i))
			}
			if err == nil {
				_, err = b.Prepare(ctx)
			}
			if err == nil {
				err = b.Commit(ctx)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("branch %d: %v", i, err)
		}
	}
	if got := e.queryInt("SELECT COUNT(*) FROM " + tbl); got != n {
		t.Errorf("rows: %d, want %d", got, n)
	}
	assertPoolClean(t, r.Pool())
}

// A pooled connection whose backend died while idle (a server restart, an
// administrator's pg_terminate_backend) costs Begin one retry, not a
// failure.
func TestBeginRetriesDeadPooledConnection(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	pool := newPool(t, e.url, 1)
	r := postgres.New("pg-one", pool)
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := int64(c.Conn().PgConn().PID())
	c.Release()
	e.terminate(pid) // the pool does not ping a connection idle for under a second
	b, err := r.Begin(ctx, drivertest.NewXID())
	if err != nil {
		t.Fatalf("Begin on a pool holding a dead connection: %v", err)
	}
	if err := b.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	assertPoolClean(t, pool)
}
