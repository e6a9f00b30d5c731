package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/postgres"
)

var parts = []decisionlog.Participant{{Resource: "mysql", Branch: 1}}

// keeperRow reads g's decision row through the resource.
func keeperRow(ctx context.Context, t *testing.T, r *postgres.Resource, g drivers.GlobalID) (decisionlog.Decision, bool) {
	t.Helper()
	d, ok, err := r.LookupDecision(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	return d, ok
}

// The decision row and the branch's own writes commit together, in one
// round trip; the row reads back, lists, fences nothing and is forgotten.
func TestKeeperCommitWithDecision(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("keep", "id INT PRIMARY KEY")
	b, h := e.begin(ctx)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 1); err != nil {
		t.Fatal(err)
	}
	g := b.XID().Global
	if err := e.r.CommitWithDecision(ctx, b, g, parts); err != nil {
		t.Fatal(err)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 1 {
		t.Fatalf("%d rows, want the branch's write committed", n)
	}
	d, ok := keeperRow(ctx, t, e.r, g)
	if !ok || d.Abort || !slices.Equal(d.Participants, parts) || d.GTRID != g {
		t.Fatalf("row = %+v, %v; want the commit decision naming %v", d, ok, parts)
	}
	list, err := e.r.ListDecisions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(k decisionlog.Decision) bool { return k.GTRID == g && !k.Abort }) {
		t.Fatalf("ListDecisions does not list %s", g)
	}
	// Recovery's fence finds the decision and reports it instead.
	committed, err := e.r.FenceAbort(ctx, g)
	if err != nil || !committed {
		t.Fatalf("FenceAbort = %v, %v; want committed", committed, err)
	}
	if d, _ := keeperRow(ctx, t, e.r, g); d.Abort {
		t.Fatal("FenceAbort overwrote the commit decision")
	}
	if err := e.r.ForgetDecisions(ctx, []drivers.GlobalID{g}); err != nil {
		t.Fatal(err)
	}
	if _, ok := keeperRow(ctx, t, e.r, g); ok {
		t.Fatal("row still there after ForgetDecisions")
	}
	e.assertPoolClean()
}

// An abort marker written first (recovery's fence) refuses the decision:
// the keeper's branch rolls back with it.
func TestKeeperFenceFirstRefusesDecision(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("keepfence", "id INT PRIMARY KEY")
	b, h := e.begin(ctx)
	g := b.XID().Global
	for range 2 { // idempotent
		if committed, err := e.r.FenceAbort(ctx, g); err != nil || committed {
			t.Fatalf("FenceAbort = %v, %v; want an abort marker", committed, err)
		}
	}
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 1); err != nil {
		t.Fatal(err)
	}
	err := e.r.CommitWithDecision(ctx, b, g, parts)
	wantClass(t, "CommitWithDecision after the fence", err, drivers.ErrRefused)
	wantCode(t, "CommitWithDecision after the fence", err, "23505")
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 0 {
		t.Fatal("the keeper's write committed although the decision was refused")
	}
	if d, ok := keeperRow(ctx, t, e.r, g); !ok || !d.Abort {
		t.Fatalf("row = %+v, %v; want the abort marker", d, ok)
	}
	_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{g})
	e.assertPoolClean()
}

// The fence and a decision still being committed exclude each other: the
// fence waits for the decision's transaction and reports what it did.
func TestKeeperFenceWaitsForUncommittedDecision(t *testing.T) {
	for _, commit := range []bool{true, false} {
		name := "decision commits"
		if !commit {
			name = "decision rolls back"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := ctxT(t)
			if err := e.r.EnsureDecisionTable(ctx); err != nil {
				t.Fatal(err)
			}
			b, _ := e.begin(ctx) // only for a fresh gtrid
			g := b.XID().Global
			// A decision inserted and not yet committed, as the keeper's
			// transaction has it between its INSERT and its COMMIT.
			tx, err := e.admin.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background())
			if _, err := tx.Exec(ctx, "INSERT INTO "+postgres.DecisionTable+" (gtrid, state, participants) VALUES ($1, 'C', '[]')", g.String()); err != nil {
				t.Fatal(err)
			}
			type result struct {
				committed bool
				err       error
			}
			res := make(chan result, 1)
			go func() {
				c, err := e.r.FenceAbort(ctx, g)
				res <- result{c, err}
			}()
			e.waitFor("the fence to wait on the decision's row lock", func() bool {
				return e.queryInt(`SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
					AND query LIKE 'INSERT INTO `+postgres.DecisionTable+` AS d%'`) > 0
			})
			if commit {
				err = tx.Commit(ctx)
			} else {
				err = tx.Rollback(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			r := <-res
			if r.err != nil || r.committed != commit {
				t.Fatalf("FenceAbort = %v, %v; want committed = %v", r.committed, r.err, commit)
			}
			if d, ok := keeperRow(ctx, t, e.r, g); !ok || d.Abort == commit {
				t.Fatalf("row = %+v, %v", d, ok)
			}
			_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{g})
		})
	}
}

// A keeper whose INSERT and COMMIT never got an answer is in doubt: the
// server may still run them after the client gave up (here it does, when
// the lock it waited for is released). The table settles it, all or
// nothing: the branch's write committed exactly when the decision row did,
// and the fence reports the same.
func TestKeeperInDoubtSettledByTable(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("keepdoubt", "id INT PRIMARY KEY")
	if err := e.r.EnsureDecisionTable(ctx); err != nil {
		t.Fatal(err)
	}
	b, h := e.begin(ctx)
	g := b.XID().Global
	pid := backendPID(ctx, t, h)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 1); err != nil {
		t.Fatal(err)
	}
	// Hold the gtrid's key so the keeper's INSERT waits, then give up on it.
	tx, err := e.admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "INSERT INTO "+postgres.DecisionTable+" (gtrid, state, participants) VALUES ($1, 'A', '')", g.String()); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = e.r.CommitWithDecision(cctx, b, g, parts)
	wantClass(t, "CommitWithDecision cut off while waiting", err, drivers.ErrInDoubt)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the keeper's backend to end", func() bool {
		return e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0
	})
	d, decided := keeperRow(ctx, t, e.r, g)
	written := e.queryInt("SELECT COUNT(*) FROM "+tbl) == 1
	if decided != written || decided && d.Abort {
		t.Fatalf("decision row %v (%+v) but branch write committed %v: not all or nothing", decided, d, written)
	}
	committed, err := e.r.FenceAbort(ctx, g)
	if err != nil || committed != decided {
		t.Fatalf("FenceAbort = %v, %v; want committed = %v", committed, err, decided)
	}
	t.Logf("the cut-off keeper committed: %v", decided)
	_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{g})
}

// A keeper branch that ran nothing still commits the decision (its
// transaction is opened in the same round trip).
func TestKeeperWithoutStatements(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	b, _ := e.begin(ctx)
	g := b.XID().Global
	if err := e.r.CommitWithDecision(ctx, b, g, parts); err != nil {
		t.Fatal(err)
	}
	if d, ok := keeperRow(ctx, t, e.r, g); !ok || d.Abort {
		t.Fatalf("row = %+v, %v", d, ok)
	}
	_ = e.r.ForgetDecisions(ctx, []drivers.GlobalID{g})
	e.assertPoolClean()
}

// The first Exec carries BEGIN in the same round trip, and runs inside the
// branch's transaction: rolled back with it, and a failure there refuses
// the prepare.
func TestFirstExecPipelinesBegin(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("lazybegin", "id INT PRIMARY KEY")
	e.exec("INSERT INTO " + tbl + " VALUES (1)")

	b, h := e.begin(ctx)
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl); n != 1 {
		t.Fatalf("%d rows: the first statement escaped the branch's transaction", n)
	}

	b2, h2 := e.begin(ctx)
	_, err := h2.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 1) // duplicate key
	wantCode(t, "first Exec", err, "23505")
	_, err = b2.Prepare(ctx)
	wantClass(t, "Prepare after a failed first statement", err, drivers.ErrRefused)

	// A branch that runs nothing opens no transaction and votes read-only.
	b3, _ := e.begin(ctx)
	if v, err := b3.Prepare(ctx); err != nil || v != drivers.VoteReadOnly {
		t.Fatalf("Prepare of an empty branch = %v, %v; want read-only", v, err)
	}
	// An explicit QueryExecMode is honoured (BEGIN then goes alone).
	b4, h4 := e.begin(ctx)
	if _, err := h4.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", pgx.QueryExecModeSimpleProtocol, 4); err != nil {
		t.Fatal(err)
	}
	if v, err := b4.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("Prepare = %v, %v", v, err)
	}
	if err := b4.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.queryInt("SELECT COUNT(*) FROM " + tbl + " WHERE id = 4"); n != 1 {
		t.Fatal("the committed branch's row is missing")
	}
	e.assertPoolClean()
}
