package mysql

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

var keptParts = []decisionlog.Participant{{Resource: "pg", Branch: 0}}

// keeperModes are the two ways CommitWithDecision talks to the server:
// INSERT and COMMIT in two round trips, or in one multi-statement query
// when the DSN allows it.
var keeperModes = []struct {
	name  string
	multi bool
}{{"two round trips", false}, {"multiStatements", true}}

// keeperEnv returns an env whose resource runs through a proxy (to see and
// cut what it sends), with multiStatements as asked.
func keeperEnv(t *testing.T, multi bool, maxOpen int) (*env, *proxy) {
	t.Helper()
	e := newEnv(t, maxOpen)
	p := newProxy(t, e.cfg.Addr)
	cfg := e.cfg.Clone()
	cfg.Addr = p.addr()
	cfg.MultiStatements = multi
	e.db = openDB(t, cfg, maxOpen)
	e.r = New("mysql-keeper", e.db)
	return e, p
}

// beginKept starts a keeper branch; the test's cleanup rolls it back if the
// test left it open and deletes its decision row.
func (e *env) beginKept(ctx context.Context) *branch {
	e.t.Helper()
	db, err := e.r.BeginKept(ctx, drivertest.NewXID())
	if err != nil {
		e.t.Fatalf("BeginKept: %v", err)
	}
	b := db.(*branch)
	e.t.Cleanup(func() {
		ctx, cancel := bg()
		defer cancel()
		_ = b.Rollback(ctx)
		_ = b.Close()
		_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{b.xid.Global})
	})
	return b
}

// row reads g's decision row through the resource.
func (e *env) row(g drivers.GlobalID) (decisionlog.Decision, bool) {
	e.t.Helper()
	ctx, cancel := bg()
	defer cancel()
	d, ok, err := e.r.LookupDecision(ctx, g)
	if err != nil {
		e.t.Fatalf("LookupDecision: %v", err)
	}
	return d, ok
}

func wantNumber(t *testing.T, what string, err error, n uint16) {
	t.Helper()
	var me *mysqldriver.MySQLError
	if !errors.As(err, &me) || me.Number != n {
		t.Fatalf("%s: %v, want a reachable MySQL error %d", what, err, n)
	}
}

// The keeper's branch is a local transaction (BEGIN, never XA) whose
// decision row and writes commit together, the INSERT and the COMMIT in as
// few round trips as the DSN allows; the row reads back, lists, makes the
// fence report the commit, and is forgotten.
func TestKeeperCommitWithDecision(t *testing.T) {
	for _, m := range keeperModes {
		t.Run(m.name, func(t *testing.T) {
			e, p := keeperEnv(t, m.multi, 1)
			tbl := e.table("keep")
			ctx := ctxT(t)
			// The first branch also creates the table and asks for
			// multi-statement support; the second shows the hot path.
			first := e.beginKept(ctx)
			if err := e.r.CommitWithDecision(ctx, first, first.xid.Global, keptParts); err != nil {
				t.Fatal(err)
			}
			p.commands()
			b := e.beginKept(ctx)
			if b.owner != first.owner {
				t.Fatalf("the committed keeper's session did not go back to the pool (owners %d, %d)", first.owner, b.owner)
			}
			ins := fmt.Sprintf("INSERT INTO %s VALUES (10, 10)", tbl)
			if _, err := b.user.ExecContext(ctx, ins); err != nil {
				t.Fatal(err)
			}
			g := b.xid.Global
			if err := e.r.CommitWithDecision(ctx, b, g, keptParts); err != nil {
				t.Fatal(err)
			}
			decision := fmt.Sprintf("query: INSERT INTO %s (gtrid, state, participants, decided_at) VALUES ('%s', IF(@@in_transaction AND UTC_TIMESTAMP(6) < '%s', 'C', NULL), X'%x', UTC_TIMESTAMP(6))",
				DecisionTable, g, g.Deadline().Add(lateDecision).UTC().Format(decidedAtLayout), `[{"r":"pg","b":0}]`)
			want := []string{"query: BEGIN", "query: " + ins, decision, "query: COMMIT"}
			if m.multi {
				want = []string{"query: BEGIN", "query: " + ins, decision + "; COMMIT"}
			}
			if got := p.commands(); !slices.Equal(got, want) {
				t.Fatalf("the keeper sent\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
			if e.rows(tbl, 10) != 1 {
				t.Fatal("the branch's write is not committed")
			}
			d, ok := e.row(g)
			if !ok || d.Abort || d.GTRID != g || !slices.Equal(d.Participants, keptParts) || time.Since(d.At).Abs() > time.Minute {
				t.Fatalf("row = %+v, %v; want the commit decision naming %v, written now", d, ok, keptParts)
			}
			list, err := e.r.ListDecisions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(list, func(k decisionlog.Decision) bool { return k.GTRID == g && !k.Abort }) {
				t.Fatalf("ListDecisions does not list %s", g)
			}
			if committed, err := e.r.FenceAbort(ctx, g); err != nil || !committed {
				t.Fatalf("FenceAbort = %v, %v; want committed", committed, err)
			}
			if d, _ := e.row(g); d.Abort {
				t.Fatal("FenceAbort overwrote the commit decision")
			}
			if err := e.r.ForgetDecisions(ctx, []drivers.GlobalID{g, first.xid.Global}); err != nil {
				t.Fatal(err)
			}
			if _, ok := e.row(g); ok {
				t.Fatal("row still there after ForgetDecisions")
			}
			wantCleanPool(t, e.db, 1)
		})
	}
}

// An abort marker written first (recovery's fence) refuses the decision:
// the keeper's branch rolls back with it, and its session stays usable.
func TestKeeperFenceFirstRefusesDecision(t *testing.T) {
	for _, m := range keeperModes {
		t.Run(m.name, func(t *testing.T) {
			e, _ := keeperEnv(t, m.multi, 2)
			tbl := e.table("keepfence")
			ctx := ctxT(t)
			b := e.beginKept(ctx)
			g := b.xid.Global
			for range 2 { // idempotent
				if committed, err := e.r.FenceAbort(ctx, g); err != nil || committed {
					t.Fatalf("FenceAbort = %v, %v; want an abort marker", committed, err)
				}
			}
			e.insert(ctx, b, tbl, 20)
			err := e.r.CommitWithDecision(ctx, b, g, keptParts)
			wantKind(t, "CommitWithDecision after the fence", err, drivers.ErrRefused)
			wantNumber(t, "CommitWithDecision after the fence", err, erDupEntry)
			if e.rows(tbl, 20) != 0 {
				t.Fatal("the keeper's write committed although the decision was refused")
			}
			if d, ok := e.row(g); !ok || !d.Abort {
				t.Fatalf("row = %+v, %v; want the abort marker", d, ok)
			}
			wantCleanPool(t, e.db, 2)
		})
	}
}

// waitLockWait waits until a transaction waits for a row lock while
// running a statement that names g. INNODB_TRX is a cache that MariaDB
// refreshes only when it has not been read for 100 ms, hence the slow poll.
func (e *env) waitLockWait(g drivers.GlobalID, what string) {
	e.t.Helper()
	q := "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE '%" + g.String() + "%'"
	for deadline := time.Now().Add(10 * time.Second); e.queryInt(q) == 0; {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// The fence and a decision still being committed exclude each other
// through the row lock of their shared primary key, in both orders: the
// second to come waits for the first's transaction and then does what its
// outcome requires.
func TestKeeperFenceAndDecisionWaitForEachOther(t *testing.T) {
	tests := []struct {
		name          string
		decisionFirst bool // else the abort marker is first
		firstCommits  bool
		wantCommitted bool // the outcome: the decision stands
	}{
		{"fence waits for a decision that commits", true, true, true},
		{"fence waits for a decision that rolls back", true, false, false},
		{"decision waits for a marker that commits", false, true, false},
		{"decision waits for a marker that rolls back", false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := keeperEnv(t, false, 2)
			tbl := e.table("keepwait")
			ctx := ctxT(t)
			b := e.beginKept(ctx) // also creates the table
			g := b.xid.Global
			e.insert(ctx, b, tbl, 30)
			// The first party's row, inserted and not committed yet.
			first, err := e.admin.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer discard(first)
			state := "A"
			if tc.decisionFirst {
				state = "C"
			}
			for _, q := range []string{"BEGIN", fmt.Sprintf("INSERT INTO %s VALUES ('%s', '%s', '[]', UTC_TIMESTAMP(6))", DecisionTable, g, state)} {
				if _, err := first.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			second := make(chan error, 1)
			var committed bool
			go func() {
				var err error
				if tc.decisionFirst {
					committed, err = e.r.FenceAbort(ctx, g)
				} else {
					err = e.r.CommitWithDecision(ctx, b, g, keptParts)
				}
				second <- err
			}()
			e.waitLockWait(g, "the second party to wait on the row lock")
			end := "ROLLBACK"
			if tc.firstCommits {
				end = "COMMIT"
			}
			if _, err := first.ExecContext(ctx, end); err != nil {
				t.Fatal(err)
			}
			err = <-second
			if tc.decisionFirst {
				if err != nil || committed != tc.wantCommitted {
					t.Fatalf("FenceAbort = %v, %v; want committed = %v", committed, err, tc.wantCommitted)
				}
			} else if tc.wantCommitted {
				if err != nil {
					t.Fatalf("CommitWithDecision after the marker rolled back: %v", err)
				}
				if e.rows(tbl, 30) != 1 {
					t.Fatal("the decision committed without the branch's write")
				}
			} else {
				wantKind(t, "CommitWithDecision after the marker committed", err, drivers.ErrRefused)
				wantNumber(t, "CommitWithDecision after the marker committed", err, erDupEntry)
				if e.rows(tbl, 30) != 0 {
					t.Fatal("the refused keeper's write committed")
				}
			}
			if d, ok := e.row(g); !ok || d.Abort == tc.wantCommitted {
				t.Fatalf("row = %+v, %v; want commit = %v", d, ok, tc.wantCommitted)
			}
		})
	}
}

// A keeper whose COMMIT got no answer is in doubt, and its decision row
// settles it all or nothing: here the server did commit (the proxy lost
// only the answer), so the row and the write are both there, and the
// fence reports the commit.
func TestKeeperCommitReplyLost(t *testing.T) {
	for _, m := range keeperModes {
		t.Run(m.name, func(t *testing.T) {
			e, p := keeperEnv(t, m.multi, 1)
			tbl := e.table("keeplost")
			ctx := ctxT(t)
			b := e.beginKept(ctx)
			g := b.xid.Global
			e.insert(ctx, b, tbl, 40)
			p.loseReplyTo("COMMIT")
			err := e.r.CommitWithDecision(ctx, b, g, keptParts)
			wantKind(t, "CommitWithDecision with its reply lost", err, drivers.ErrInDoubt)
			if p.cuts.Load() != 1 {
				t.Fatalf("proxy cut %d connections, want 1", p.cuts.Load())
			}
			eventually(t, 10*time.Second, "the keeper's session to end", func() bool { return !e.sessionListed(b.owner) })
			d, ok := e.row(g)
			if !ok || d.Abort || e.rows(tbl, 40) != 1 {
				t.Fatalf("row %+v %v, write %d: want both committed", d, ok, e.rows(tbl, 40))
			}
			if committed, err := e.r.FenceAbort(ctx, g); err != nil || !committed {
				t.Fatalf("FenceAbort = %v, %v; want committed", committed, err)
			}
			wantCleanPool(t, e.db, 1)
		})
	}
}

// A keeper cut off while its decision INSERT waits for a lock: with two
// round trips the COMMIT was never sent, so the call is refused for certain
// and the server rolls the transaction back; with one multi-statement query
// the server may still run INSERT and COMMIT after the client has gone, so
// the call is in doubt. Either way the table and the write agree, and the
// fence reports the same.
func TestKeeperCutOffWhileWaiting(t *testing.T) {
	for _, m := range keeperModes {
		t.Run(m.name, func(t *testing.T) {
			e, _ := keeperEnv(t, m.multi, 1)
			tbl := e.table("keepcut")
			ctx := ctxT(t)
			b := e.beginKept(ctx)
			g := b.xid.Global
			e.insert(ctx, b, tbl, 50)
			// Hold g's key with an uncommitted abort marker, so that the
			// keeper's INSERT waits; give up on it; then let it go on.
			holder, err := e.admin.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer discard(holder)
			for _, q := range []string{"BEGIN", fmt.Sprintf("INSERT INTO %s VALUES ('%s', 'A', '', UTC_TIMESTAMP(6))", DecisionTable, g)} {
				if _, err := holder.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			cctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- e.r.CommitWithDecision(cctx, b, g, keptParts) }()
			e.waitLockWait(g, "the keeper's INSERT to wait on the row lock")
			cancel()
			err = <-done
			want := drivers.ErrRefused
			if m.multi {
				want = drivers.ErrInDoubt
			}
			wantKind(t, "CommitWithDecision cut off while waiting", err, want)
			if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "the keeper's session to end", func() bool { return !e.sessionListed(b.owner) })
			d, decided := e.row(g)
			written := e.rows(tbl, 50) == 1
			if decided != written || decided && d.Abort {
				t.Fatalf("decision row %v (%+v) but branch write committed %v: not all or nothing", decided, d, written)
			}
			if !m.multi && decided {
				t.Fatal("the decision committed although its COMMIT was never sent")
			}
			committed, err := e.r.FenceAbort(ctx, g)
			if err != nil || committed != decided {
				t.Fatalf("FenceAbort = %v, %v; want committed = %v", committed, err, decided)
			}
			t.Logf("the cut-off keeper committed: %v", decided)
		})
	}
}

// When MariaDB ends the keeper's local transaction under it, the session
// goes on in autocommit, so neither a decision nor a one-phase commit may
// follow. A deadlock the adapter sees stops the branch at once; one that
// only the application's rows report is found (@@in_transaction) before
// the next statement or the commit; one it cannot see (here: a ROLLBACK the
// application ran itself, past the statement guard, turned off) is caught
// by the check in the decision INSERT (@@in_transaction) or before the
// one-phase COMMIT.
func TestKeeperTransactionEndedUnderIt(t *testing.T) {
	for _, how := range []string{
		"deadlock", "deadlock seen by QueryRow", "failing DDL past the guard", "ROLLBACK statement past the guard",
		"deadlock of a range read, at Row.Scan", "deadlock of a range read, at Rows.Next", "deadlock of a range read, at Rows.Next, then commit",
	} {
		for _, commit := range []string{"CommitWithDecision", "CommitOnePhase"} {
			t.Run(how+"/"+commit, func(t *testing.T) {
				e, _ := keeperEnv(t, false, 2)
				tbl := e.table("keepended")
				ctx := ctxT(t)
				b := e.beginKept(ctx)
				g := b.xid.Global
				if strings.HasSuffix(how, "past the guard") {
					// The guard refuses these before they are sent
					// (TestGuardKeepsBranchUsable); with it off, they show
					// the checks behind it.
					b.unguarded = true
				}
				e.insert(ctx, b, tbl, 60)
				switch how {
				case "deadlock":
					if _, err := deadlock(ctx, e, b, tbl, 70); err != nil {
						t.Fatal(err)
					}
				case "deadlock seen by QueryRow":
					// Its error only reaches the application, at Scan.
					berr, err := deadlockWith(ctx, e, b, tbl, 70, func(q string) error {
						var v int64
						return b.user.QueryRowContext(ctx, strings.Replace(q, "UPDATE "+tbl+" SET v = 2 WHERE", "SELECT v FROM "+tbl+" WHERE", 1)+" FOR UPDATE").Scan(&v)
					})
					if err != nil {
						t.Fatal(err)
					}
					wantNumber(t, "the deadlocked query", berr, erLockDeadlock)
				case "deadlock of a range read, at Row.Scan", "deadlock of a range read, at Rows.Next", "deadlock of a range read, at Rows.Next, then commit":
					// A range locking read, up to row 71 that the other
					// session holds: MariaDB sends the result set's header
					// before InnoDB waits, so the deadlock comes after the
					// adapter has handed the rows to the application.
					berr, err := deadlockWith(ctx, e, b, tbl, 70, func(string) error {
						sel := "SELECT id FROM " + tbl + " WHERE id BETWEEN 1 AND 71 ORDER BY id FOR UPDATE"
						if how == "deadlock of a range read, at Row.Scan" {
							var id int64
							return b.user.QueryRowContext(ctx, sel).Scan(&id)
						}
						rows, err := b.user.QueryContext(ctx, sel)
						if err != nil {
							return fmt.Errorf("at QueryContext: %w", err)
						}
						defer rows.Close()
						for rows.Next() {
						}
						return rows.Err()
					})
					if err != nil {
						t.Fatal(err)
					}
					wantNumber(t, "the deadlocked read", berr, erLockDeadlock)
					if b.rbCause != nil {
						t.Fatalf("the adapter saw the deadlock when it sent the query (%v), not only the application", b.rbCause)
					}
				case "failing DDL past the guard":
					// MariaDB commits the transaction before it finds the
					// table exists: row 60 is committed (the application's
					// doing), but nothing after it may commit on its own.
					_, err := b.user.ExecContext(ctx, "CREATE TABLE "+tbl+" (id INT)")
					wantNumber(t, "CREATE TABLE of an existing table", err, 1050)
				case "ROLLBACK statement past the guard":
					if _, err := b.user.ExecContext(ctx, "ROLLBACK"); err != nil {
						t.Fatal(err)
					}
				}
				if how != "ROLLBACK statement past the guard" && !strings.HasSuffix(how, "then commit") {
					_, err := b.user.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (61, 0)")
					wantKind(t, "a statement after "+how, err, drivers.ErrFailed)
					var x int
					err = b.user.QueryRowContext(ctx, "SELECT 1").Scan(&x)
					wantKind(t, "a query after "+how, err, drivers.ErrFailed)
				}
				var err error
				if commit == "CommitWithDecision" {
					err = e.r.CommitWithDecision(ctx, b, g, keptParts)
				} else {
					err = b.CommitOnePhase(ctx)
				}
				wantKind(t, commit, err, drivers.ErrRefused)
				if strings.HasPrefix(how, "deadlock") && !errors.Is(err, drivers.ErrRetryable) {
					t.Errorf("refusal after a deadlock is not marked retryable: %v", err)
				}
				if how == "ROLLBACK statement past the guard" && commit == "CommitWithDecision" {
					wantNumber(t, "the guard", err, erBadNull)
				}
				if _, ok := e.row(g); ok {
					t.Fatal("a decision row was written")
				}
				if how == "failing DDL past the guard" {
					if e.rows(tbl, 60) != 1 || e.rows(tbl, 61) != 0 {
						t.Fatal("want row 60 committed by the DDL's implicit commit, row 61 refused")
					}
				} else if e.rows(tbl, 60)+e.rows(tbl, 61) != 0 {
					t.Fatal("the branch's writes committed")
				}
				wantCleanPool(t, e.db, 2)
			})
		}
	}
}

// A keeper's branch asks @@in_transaction once after it has handed a
// result set to the application, before its next statement or its
// decision (the one-phase commit's own check does for it); a statement
// that follows a statement costs nothing extra, and neither does anything
// on an XA branch.
func TestKeeperCheckAfterQuery(t *testing.T) {
	e, p := keeperEnv(t, false, 2)
	tbl := e.table("keepcheck")
	ctx := ctxT(t)
	const check = "query: SELECT @@in_transaction"
	var (
		query    = "SELECT id FROM " + tbl + " ORDER BY id"
		queryRow = "SELECT v FROM " + tbl + " WHERE id = 1"
		update1  = "UPDATE " + tbl + " SET v = v + 1 WHERE id = 1"
		update2  = "UPDATE " + tbl + " SET v = v + 1 WHERE id = 2"
	)
	statements := func(h *Branch) {
		t.Helper()
		rows, err := h.QueryContext(ctx, query)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		var v int64
		if err := h.QueryRowContext(ctx, queryRow).Scan(&v); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{update1, update2} {
			if _, err := h.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.QueryRowContext(ctx, queryRow).Scan(&v); err != nil {
			t.Fatal(err)
		}
	}
	wantSent := func(what string, want ...string) {
		t.Helper()
		if got := p.commands(); !slices.Equal(got, want) {
			t.Fatalf("%s sent\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}

	one := e.beginKept(ctx)
	p.commands()
	statements(one.user)
	if err := one.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	wantSent("a keeper committing in one phase",
		"query: "+query, check, "query: "+queryRow, check, "query: "+update1, "query: "+update2,
		"query: "+queryRow, check, "query: COMMIT")

	kept := e.beginKept(ctx)
	p.commands()
	statements(kept.user)
	if err := e.r.CommitWithDecision(ctx, kept, kept.xid.Global, keptParts); err != nil {
		t.Fatal(err)
	}
	got := p.commands()
	if n := len(got); n < 3 || got[n-3] != check || !strings.HasPrefix(got[n-2], "query: INSERT INTO "+DecisionTable) {
		t.Fatalf("a keeper committing with its decision after a query sent\n  %s\nwant the check before the decision INSERT", strings.Join(got, "\n  "))
	}

	xb := e.begin(ctx)
	p.commands()
	statements(xb.user)
	if _, err := xb.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := xb.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := p.commands(); slices.Contains(got, check) {
		t.Fatalf("an XA branch asked @@in_transaction:\n  %s", strings.Join(got, "\n  "))
	}
	if v := e.queryInt("SELECT v FROM " + tbl + " WHERE id = 2"); v != 3 {
		t.Fatalf("row 2 has v = %d, want 3 (all three branches committed)", v)
	}
	wantCleanPool(t, e.db, 2)
}

// What else a keeper branch does: one-phase commit without a decision,
// a decision with no statements, no prepare (it rolls back), rollback,
// close; and what CommitWithDecision refuses before sending anything.
func TestKeeperBranchLifecycle(t *testing.T) {
	e, p := keeperEnv(t, false, 2)
	tbl := e.table("keeplife")
	ctx := ctxT(t)

	b := e.beginKept(ctx)
	e.insert(ctx, b, tbl, 80)
	if err := b.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.row(b.xid.Global); ok || e.rows(tbl, 80) != 1 {
		t.Fatal("one-phase commit: want the write and no decision row")
	}

	empty := e.beginKept(ctx)
	if err := e.r.CommitWithDecision(ctx, empty, empty.xid.Global, nil); err != nil {
		t.Fatal(err)
	}
	if d, ok := e.row(empty.xid.Global); !ok || d.Abort || len(d.Participants) != 0 {
		t.Fatalf("decision of an empty keeper branch: %+v %v", d, ok)
	}

	prep := e.beginKept(ctx)
	e.insert(ctx, prep, tbl, 81)
	_, err := prep.Prepare(ctx)
	wantKind(t, "Prepare of a keeper branch", err, drivers.ErrRefused)
	if err := e.r.CommitWithDecision(ctx, prep, prep.xid.Global, keptParts); err == nil {
		t.Fatal("CommitWithDecision after the refused prepare succeeded")
	}

	rb := e.beginKept(ctx)
	e.insert(ctx, rb, tbl, 82)
	if err := rb.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	closed := e.beginKept(ctx)
	e.insert(ctx, closed, tbl, 83)
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	for id := int64(81); id <= 83; id++ {
		if e.rows(tbl, id) != 0 {
			t.Fatalf("row %d of a rolled-back keeper branch is visible", id)
		}
	}

	xb := e.begin(ctx) // an XA branch
	err = e.r.CommitWithDecision(ctx, xb, xb.xid.Global, keptParts)
	wantKind(t, "CommitWithDecision on an XA branch", err, drivers.ErrFailed)
	kb := e.beginKept(ctx)
	err = e.r.CommitWithDecision(ctx, kb, xb.xid.Global, keptParts)
	wantKind(t, "CommitWithDecision for another gtrid", err, drivers.ErrFailed)
	if err := xb.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	p.commands()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = e.r.CommitWithDecision(cctx, kb, kb.xid.Global, keptParts)
	wantKind(t, "CommitWithDecision with an ended context", err, drivers.ErrRefused)
	if got := p.commands(); !slices.Equal(got, []string{"query: ROLLBACK"}) {
		t.Fatalf("with an ended context the keeper sent %q, want only its ROLLBACK", got)
	}
	_, err = e.r.BeginKept(ctx, drivers.XID{})
	wantKind(t, "BeginKept(zero XID)", err, drivers.ErrFailed)
	wantCleanPool(t, e.db, 2)
}

// A database without the table: reading finds nothing, deleting does
// nothing, EnsureDecisionTable creates it (InnoDB, binary gtrid), and a
// gtrid that xabridge did not write is never listed.
func TestKeeperMissingTableAndForeignRows(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	dbName := fmt.Sprintf("xab_keep_%08x", rand.Uint32())
	e.sqlExec("CREATE DATABASE " + dbName)
	t.Cleanup(func() { _, _ = e.admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+dbName) })
	cfg := e.cfg.Clone()
	cfg.DBName = dbName
	r := New("mysql-empty", openDB(t, cfg, 2))
	g := drivertest.NewXID().Global
	if _, ok, err := r.LookupDecision(ctx, g); ok || err != nil {
		t.Fatalf("LookupDecision without the table: %v %v", ok, err)
	}
	if ds, err := r.ListDecisions(ctx); len(ds) != 0 || err != nil {
		t.Fatalf("ListDecisions without the table: %v %v", ds, err)
	}
	if err := r.ForgetDecisions(ctx, []drivers.GlobalID{g}); err != nil {
		t.Fatalf("ForgetDecisions without the table: %v", err)
	}
	if err := r.EnsureDecisionTable(ctx); err != nil {
		t.Fatal(err)
	}
	var engine, gtridType string
	if err := e.admin.QueryRowContext(ctx, `SELECT t.ENGINE, c.COLUMN_TYPE FROM information_schema.TABLES t
		JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME AND c.COLUMN_NAME = 'gtrid'
		WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ?`, dbName, DecisionTable).Scan(&engine, &gtridType); err != nil {
		t.Fatal(err)
	}
	if engine != "InnoDB" || gtridType != "varbinary(64)" {
		t.Fatalf("table is %s with gtrid %s, want InnoDB and varbinary(64)", engine, gtridType)
	}
	e.sqlExec("INSERT INTO " + dbName + "." + DecisionTable + " VALUES ('not-ours', 'C', '[]', UTC_TIMESTAMP(6))")
	if committed, err := r.FenceAbort(ctx, g); err != nil || committed {
		t.Fatalf("FenceAbort: %v %v", committed, err)
	}
	ds, err := r.ListDecisions(ctx)
	if err != nil || len(ds) != 1 || ds[0].GTRID != g || !ds[0].Abort {
		t.Fatalf("ListDecisions = %+v, %v; want only the abort marker of %s", ds, err, g)
	}
	_, _, err = r.LookupDecision(ctx, drivers.GlobalID{})
	wantKind(t, "LookupDecision of an invalid gtrid", err, drivers.ErrFailed)
	err = r.ForgetDecisions(ctx, []drivers.GlobalID{g, {}})
	wantKind(t, "ForgetDecisions with an invalid gtrid", err, drivers.ErrFailed)
	var n int
	if err := e.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+dbName+"."+DecisionTable).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d rows (%v); a refused ForgetDecisions must delete nothing", n, err)
	}
}

// A decision arriving more than lateDecision past its transaction's
// deadline by the database's clock (bytes held in a long partition) is
// refused, and nothing of the keeper's branch commits: recovery may by then
// have rolled the other branches back and deleted its abort marker.
func TestKeeperRefusesALateDecision(t *testing.T) {
	for _, m := range keeperModes {
		t.Run(m.name, func(t *testing.T) {
			e, _ := keeperEnv(t, m.multi, 1)
			tbl := e.table("keeplate")
			ctx := ctxT(t)
			now := time.Now()
			xid := drivers.XID{Global: drivers.MustGlobalID(drivertest.NodeID, now.Add(-time.Hour).UTC().Truncate(time.Millisecond), rand.Uint32(), now.Add(-lateDecision-time.Minute).UTC().Truncate(time.Millisecond))}
			db, err := e.r.BeginKept(ctx, xid)
			if err != nil {
				t.Fatal(err)
			}
			b := db.(*branch)
			defer func() { _ = b.Rollback(context.Background()); _ = b.Close() }()
			e.insert(ctx, b, tbl, 80)
			err = e.r.CommitWithDecision(ctx, b, xid.Global, keptParts)
			wantKind(t, "a late decision", err, drivers.ErrRefused)
			wantNumber(t, "the guard", err, erBadNull)
			if _, ok := e.row(xid.Global); ok {
				t.Fatal("a decision row was written")
			}
			if e.rows(tbl, 80) != 0 {
				t.Fatal("the keeper's write committed")
			}
			wantCleanPool(t, e.db, 1)
		})
	}
}
