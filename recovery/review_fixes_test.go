package recovery

import (
	"context"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// bothLogged prepares g on a (branch 0) and b (branch 1) with a commit
// decision in the log.
func (e *env) bothLogged(t *testing.T, g drivers.GlobalID) {
	t.Helper()
	e.a.AddPrepared(x(g, 0))
	e.b.AddPrepared(x(g, 1))
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}
}

// Resolving one transaction ends its decision only: another commit-pending
// transaction keeps its decision (in the log or in a keeper) and is
// committed by the next pass, never presumed aborted.
func TestResolveEndsOnlyItsOwnTransaction(t *testing.T) {
	ctx := context.Background()
	t.Run("log", func(t *testing.T) {
		zero := time.Duration(0)
		e := newEnv(t, func(c *Config) { c.MinAge = &zero })
		g1, g2 := gid("n1", time.Second, time.Minute), gid("n1", time.Second, time.Minute)
		e.bothLogged(t, g1)
		e.bothLogged(t, g2)
		if err := e.a.CommitPrepared(ctx, x(g2, 0)); err != nil { // g2's phase 2 reached a before the crash
			t.Fatal(err)
		}
		rep, err := e.rec.Resolve(ctx, g1, true, false, "op")
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Ended) != 1 || rep.Ended[0] != g1.String() {
			t.Errorf("ended %v, want only %s", rep.Ended, g1)
		}
		if en, _ := e.log.Lookup(g2); en.State != decisionlog.StateCommitted {
			t.Fatalf("g2's log state is %v after resolving g1, want committed", en.State)
		}
		if err := e.log.Compact(ctx); err != nil {
			t.Fatal(err)
		}
		e.rec.Pass(ctx, false)
		e.rec.Pass(ctx, false)
		if s := e.b.State(x(g2, 1)); s != "committed" {
			t.Errorf("g2's branch on b is %s, want committed", s)
		}
	})
	t.Run("keeper", func(t *testing.T) {
		e := newKeeperEnv(t, true)
		g1, g2 := gid("n1", time.Minute, -30*time.Second), gid("n1", time.Minute, -30*time.Second)
		for _, g := range []drivers.GlobalID{g1, g2} {
			e.k.PutDecision(keptCommit(g))
			e.b.AddPrepared(x(g, 1))
		}
		if _, err := e.rec.Resolve(ctx, g1, true, false, "op"); err != nil {
			t.Fatal(err)
		}
		if _, ok := e.k.Rows()[g2]; !ok {
			t.Fatal("resolving g1 deleted g2's kept commit decision")
		}
		if _, ok := e.k.Rows()[g1]; ok {
			t.Error("g1's kept decision was not deleted once its branch committed")
		}
		e.twoPasses()
		if s := e.b.State(x(g2, 1)); s != "committed" {
			t.Errorf("g2's branch is %s, want committed", s)
		}
	})
}

// A resource the first of Resolve's two scans could not list may hold a
// branch: the decision is not ended, and the report says so (scan error,
// the branch seen once waits), so the CLI does not exit 0.
func TestResolveAfterAFailedFirstScan(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	g := gid("n1", time.Second, time.Minute)
	e.bothLogged(t, g)
	e.b.FailNext("recover", drivers.ErrRetryable) // the first scan only
	rep, err := e.rec.Resolve(ctx, g, true, false, "op")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.ScanErrors) == 0 || rep.Remaining() == 0 {
		t.Errorf("scan errors %v, remaining %d: want the failed scan reported and b's branch remaining", rep.ScanErrors, rep.Remaining())
	}
	if s := e.b.State(x(g, 1)); s != "prepared" {
		t.Fatalf("b's branch is %s; it was seen in one scan only", s)
	}
	if en, _ := e.log.Lookup(g); en.State != decisionlog.StateCommitted {
		t.Errorf("log state %v, want committed (not ended while b's branch is prepared)", en.State)
	}
	if _, err := e.rec.Resolve(ctx, g, true, false, "op"); err != nil {
		t.Fatal(err)
	}
	if s := e.b.State(x(g, 1)); s != "committed" {
		t.Errorf("after resolving again b's branch is %s, want committed", s)
	}
}

// After an operator forced an outcome against the log, passes leave the
// transaction's other branches to the operator instead of finishing them
// by the decision the operator overrode.
func TestForcedOutcomeIsLeftToTheOperator(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	g := gid("n1", time.Second, time.Minute)
	e.bothLogged(t, g)
	e.b.FailNext("rollback-prepared", drivers.ErrBusy)
	if _, err := e.rec.Resolve(ctx, g, false, true, "op"); err != nil {
		t.Fatal(err)
	}
	if s := e.a.State(x(g, 0)); s != "rolled-back" {
		t.Fatalf("a is %s after the forced rollback", s)
	}
	e.rec.Pass(ctx, false)
	rep := e.rec.Pass(ctx, false)
	if s := e.b.State(x(g, 1)); s != "prepared" {
		t.Fatalf("a pass finished b's branch (%s) against the operator's forced rollback", s)
	}
	for _, b := range rep.Branches {
		if b.Class != Heuristic || b.Action != ActionNone {
			t.Errorf("b's branch: %s/%s (%s), want heuristic, no action", b.Class, b.Action, b.Reason)
		}
	}
}

// A branch of ours that a resource lists as not ours to finish (prepared
// by another PostgreSQL role) keeps its transaction's decision open.
func TestListedButNotOursKeepsTheDecision(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	g := gid("n1", time.Second, time.Minute)
	if err := e.log.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a", Branch: 0}}}); err != nil {
		t.Fatal(err)
	}
	e.a.AddForeignXID(x(g, 0), "prepared by role other (finish it as that role or a superuser)")
	e.rec.Pass(ctx, false)
	if en, _ := e.log.Lookup(g); en.State != decisionlog.StateCommitted {
		t.Errorf("log state %v, want committed: the branch is still prepared", en.State)
	}
}

// Without the keeper configured as the fence, a decision table that
// cannot be read may hold the commit decision: no orphan is presumed
// aborted until it can be read.
func TestUnreadableDecisionTableBlocksPresumedAbort(t *testing.T) {
	e := newKeeperEnv(t, false)
	g := gid("n1", time.Minute, -30*time.Second)
	e.k.PutDecision(keptCommit(g))
	e.b.AddPrepared(x(g, 1))
	e.k.FailNext("list-decisions", drivers.ErrRetryable)
	e.k.FailNext("list-decisions", drivers.ErrRetryable)
	rep := e.twoPasses()
	if s := e.b.State(x(g, 1)); s != "prepared" {
		t.Fatalf("branch %s while its decision table was unreadable", s)
	}
	if rep.Remaining() != 1 {
		t.Errorf("remaining %d, want 1", rep.Remaining())
	}
	e.twoPasses()
	if s := e.b.State(x(g, 1)); s != "committed" {
		t.Errorf("once readable, the branch is %s, want committed", s)
	}
}
