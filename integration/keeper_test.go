package integration

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// keptRows counts the decision rows of node in the keeper's table.
func keptRows(t *testing.T, b *bank.Bank, node string) (commits, aborts int) {
	t.Helper()
	ds, err := b.PG.ListDecisions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.GTRID.Node != node {
			continue
		}
		if d.Commit {
			commits++
		} else {
			aborts++
		}
	}
	return commits, aborts
}

// waitPG polls a COUNT query on PostgreSQL until it is positive. It
// reports failure with t.Errorf and returns false, so that it can run off
// the test's goroutine.
func waitPG(t *testing.T, b *bank.Bank, what, query string, args ...any) bool {
	t.Helper()
	delay := time.Millisecond
	for deadline := time.Now().Add(30 * time.Second); ; {
		var n int
		if err := b.PGPool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
			t.Errorf("waiting for %s: %v", what, err)
			return false
		}
		if n > 0 {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return false
		}
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// With the decision kept in the PostgreSQL participant, concurrent
// transfers commit atomically, PostgreSQL never prepares, the file log
// writes nothing, and the decision rows are deleted once phase 2 is done.
func TestDecisionInParticipantCommitsAndCleansUp(t *testing.T) {
	b := newBank(t, 8)
	var pgPrepared atomic.Int64
	fl, err := xa.OpenFileLog(t.TempDir(), xa.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	c := newCoord(t, b, func(cfg *xa.Config) {
		cfg.Log = fl
		cfg.DecisionResource = b.PG.Name()
		cfg.Hook = func(s xa.Step, info xa.StepInfo) {
			if s == xa.StepPrepared && info.Resource == b.PG.Name() {
				pgPrepared.Add(1)
			}
		}
	})
	const workers, each = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				amt := int64(i%5 + 1)
				if _, err := b.Do(context.Background(), c, bank.Transfer{PGAccount: int64(w + 1), MyAccount: int64(w + 1), Amount: amt}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	node := c.NodeID()
	if err := c.Close(); err != nil { // flushes the row deletes
		t.Fatal(err)
	}
	st := assertInvariants(t, b, node)
	if st.PGTransfers != workers*each {
		t.Fatalf("%d transfers committed, want %d", st.PGTransfers, workers*each)
	}
	if n := pgPrepared.Load(); n != 0 {
		t.Fatalf("PostgreSQL prepared %d times; the keeper must never prepare", n)
	}
	if s := fl.Stats(); s.Appends != 0 {
		t.Fatalf("the file log holds %d records; the decisions belong in the keeper", s.Appends)
	}
	if commits, aborts := keptRows(t, b, node); commits+aborts != 0 {
		t.Fatalf("%d decision rows and %d abort markers left after Close", commits, aborts)
	}
}

// keeperLockScene runs one transfer whose keeper INSERT waits on a row
// lock held by an uncommitted abort marker for the same gtrid, and lets
// then decide what happens to the waiting keeper. It returns the
// transfer's gtrid and Run's error.
func keeperLockScene(t *testing.T, b *bank.Bank, c *xa.Coordinator, then func(tx pgx.Tx, keeperPID int64)) (drivers.GlobalID, error) {
	t.Helper()
	ctx := context.Background()
	var (
		g     drivers.GlobalID
		admin pgx.Tx
		pid   int64
		done  = make(chan struct{})
	)
	defer func() {
		<-done
		if admin != nil {
			_ = admin.Rollback(ctx)
		}
	}()
	err := c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		defer func() {
			go func() {
				defer close(done)
				if admin == nil {
					return
				}
				if !waitPG(t, b, "the keeper's INSERT to wait on the marker's row lock",
					`SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, pid) {
					_ = admin.Rollback(context.Background()) // unblock the keeper, so Run returns
					return
				}
				then(admin, pid)
			}()
		}()
		g = tx.GlobalID()
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if err := pg.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		admin, err = b.PGPool.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := admin.Exec(ctx, "INSERT INTO "+postgres.DecisionTable+" (gtrid, state, participants) VALUES ($1, 'A', '')", g.String()); err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := pg.Exec(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance - 5 WHERE id = 1"); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance + 5 WHERE id = 1")
		return err
	})
	return g, err
}

// Recovery's abort marker, committed while the keeper waits on it,
// refuses the decision: the whole transaction aborts.
func TestDecisionInParticipantFenceRace(t *testing.T) {
	b := newBank(t, 4)
	if err := b.PG.EnsureDecisionTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := newCoord(t, b, func(cfg *xa.Config) { cfg.DecisionResource = b.PG.Name() })
	g, err := keeperLockScene(t, b, c, func(admin pgx.Tx, _ int64) {
		if err := admin.Commit(context.Background()); err != nil {
			t.Error(err)
		}
	})
	if xa.OutcomeOf(err) != xa.Aborted {
		t.Fatalf("Run = %v, want aborted (fenced by the abort marker)", err)
	}
	assertInvariants(t, b, c.NodeID())
	if pg, my, _ := b.Balances(context.Background(), 1, 1); pg != balance || my != balance {
		t.Fatalf("balances %d/%d changed", pg, my)
	}
	_ = b.PG.ForgetDecisions(context.Background(), []drivers.GlobalID{g})
}

// A keeper whose connection dies while it commits leaves the transaction in
// doubt; recovery reads the keeper's table (no decision), fences it with an
// abort marker and rolls the prepared MySQL branch back.
func TestDecisionInParticipantInDoubtRecovered(t *testing.T) {
	b := newBank(t, 4)
	ctx := context.Background()
	if err := b.PG.EnsureDecisionTable(ctx); err != nil {
		t.Fatal(err)
	}
	c := newCoord(t, b, func(cfg *xa.Config) { cfg.DecisionResource = b.PG.Name() })
	g, err := keeperLockScene(t, b, c, func(admin pgx.Tx, pid int64) {
		var ok bool
		if err := b.PGPool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
			t.Errorf("pg_terminate_backend: %v %v", ok, err)
		}
		_ = waitPG(t, b, "the keeper's backend to exit", "SELECT (COUNT(*) = 0)::int FROM pg_stat_activity WHERE pid = $1", pid)
		if err := admin.Rollback(ctx); err != nil {
			t.Error(err)
		}
	})
	if xa.OutcomeOf(err) != xa.Unknown {
		t.Fatalf("Run = %v, want outcome unknown (the keeper's commit got no answer)", err)
	}
	if n := prepared(t, b, c.NodeID()); n != 1 {
		t.Fatalf("%d branches prepared, want the MySQL one left for recovery", n)
	}
	zero := time.Duration(0)
	rec, err := recovery.New(recovery.Config{NodeID: c.NodeID(), Log: c.Log(), Resources: []drivers.Resource{b.PG, b.My},
		DecisionResource: b.PG.Name(), Settle: -1, MinAge: &zero, Active: c.Active})
	if err != nil {
		t.Fatal(err)
	}
	recoverAll(t, rec, c.NodeID())
	assertInvariants(t, b, c.NodeID())
	if pg, my, _ := b.Balances(ctx, 1, 1); pg != balance || my != balance {
		t.Fatalf("balances %d/%d, want both unchanged", pg, my)
	}
	d, ok, err := b.PG.LookupDecision(ctx, g)
	if err != nil || !ok || d.Commit {
		t.Fatalf("decision row %+v %v %v: want recovery's abort marker", d, ok, err)
	}
	_ = b.PG.ForgetDecisions(ctx, []drivers.GlobalID{g})
}

// A coordinator that died after the keeper committed the decision leaves
// the MySQL branch prepared; recovery finds the decision in the keeper's
// table, commits the branch, and deletes the row.
func TestRecoveryCommitsFromKeeperTable(t *testing.T) {
	b := newBank(t, 4)
	ctx := context.Background()
	node := "it-" + suffix()
	now := time.Now().UTC().Truncate(time.Millisecond)
	g := drivers.GlobalID{Node: node, Begin: now, Seq: 1, Deadline: now.Add(time.Minute)}
	myb, err := b.My.Begin(ctx, drivers.XID{Global: g, Branch: 1})
	if err != nil {
		t.Fatal(err)
	}
	my, err := b.My.Enlist(ctx, fixed{myb})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance + 9 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if v, err := myb.Prepare(ctx); err != nil || v != drivers.VoteCommit {
		t.Fatalf("MySQL prepare: %v %v", v, err)
	}
	_ = myb.Close() // the coordinator dies: its session goes
	pgb, err := b.PG.Begin(ctx, drivers.XID{Global: g})
	if err != nil {
		t.Fatal(err)
	}
	pg, err := b.PG.Enlist(ctx, fixed{pgb})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Exec(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance - $1 WHERE id = 2", 9); err != nil {
		t.Fatal(err)
	}
	if err := b.PG.CommitWithDecision(ctx, pgb, g, []drivers.KeptParticipant{{Resource: "mysql", Branch: 1}}); err != nil {
		t.Fatal(err)
	}
	_ = pgb.Close()

	fl, err := xa.OpenFileLog(t.TempDir(), xa.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	// No DecisionResource: the decision is read from every keeper anyway.
	rec, err := recovery.New(recovery.Config{NodeID: node, Log: fl, Resources: []drivers.Resource{b.PG, b.My}, Settle: -1})
	if err != nil {
		t.Fatal(err)
	}
	first := ours(rec.Pass(ctx, false), node)
	if len(first) != 1 || first[0].Class != recovery.CommitPending {
		t.Fatalf("first pass: %+v, want the MySQL branch classed commit-pending", first)
	}
	if ended := recoverAll(t, rec, node); len(ended) != 1 || ended[0] != g.String() {
		t.Fatalf("ended %v, want %s", ended, g)
	}
	if pg, myb, _ := b.Balances(ctx, 2, 2); pg != balance-9 || myb != balance+9 {
		t.Fatalf("balances %d/%d, want both sides of the committed transaction", pg, myb)
	}
	if commits, aborts := keptRows(t, b, node); commits+aborts != 0 {
		t.Fatalf("%d/%d rows left; recovery deletes finished decisions", commits, aborts)
	}
}

// ours returns the branches of node in rep.
func ours(rep *recovery.Report, node string) []recovery.Branch {
	var out []recovery.Branch
	for _, b := range rep.Branches {
		if b.Ours && b.XID.Global.Node == node {
			out = append(out, b)
		}
	}
	return out
}

// recoverAll runs recovery passes until no branch of node is left (a
// MariaDB branch is busy while its old session detaches), and returns the
// decisions the passes ended.
func recoverAll(t *testing.T, rec *recovery.Recoverer, node string) []string {
	t.Helper()
	var ended []string
	delay := time.Millisecond
	for deadline := time.Now().Add(20 * time.Second); ; {
		rep := rec.Pass(context.Background(), false)
		ended = append(ended, rep.Ended...)
		left := 0
		for _, b := range ours(rep, node) {
			if b.Result == "" || b.Err != nil || b.Result == "busy: retry later" {
				left++
			}
		}
		if left == 0 {
			return ended
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovery still leaves %d branches of %s: %+v", left, node, ours(rep, node))
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// fixed is an Enlister that hands out one branch begun elsewhere.
type fixed struct{ b drivers.Branch }

func (f fixed) Enlist(context.Context, drivers.Resource) (drivers.Branch, error) { return f.b, nil }
