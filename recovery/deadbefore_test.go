package recovery

import (
	"context"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// A restarted coordinator's start-up pass: with DeadBefore, one
// PassSettled call rolls back the earlier incarnation's undecided branches
// within their fence (recording the abort first), commits its decided
// ones, and leaves this incarnation's and other nodes' alone.
func TestPassSettledWithDeadBefore(t *testing.T) {
	started := time.Now().Add(-500 * time.Millisecond).Truncate(time.Millisecond)
	e := newEnv(t, func(c *Config) { c.DeadBefore = started; c.Settle = 50 * time.Millisecond })
	old := gid("n1", time.Second, time.Minute)           // the dead incarnation's, within its fence
	decided := gid("n1", 2*time.Second, time.Minute)     // the dead incarnation's, with a commit decision
	mine := gid("n1", 100*time.Millisecond, time.Minute) // this incarnation's (began after started)
	other := gid("n2", time.Second, time.Minute)         // another node's
	for _, g := range []drivers.GlobalID{old, decided, mine, other} {
		e.a.AddPrepared(x(g, 0))
		e.b.AddPrepared(x(g, 1))
	}
	ps := []decisionlog.Participant{{Resource: "a", Branch: 0}, {Resource: "b", Branch: 1}}
	if err := e.log.Commit(context.Background(), decisionlog.Decision{GTRID: decided, Participants: ps}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	reps := e.rec.PassSettled(context.Background())
	took := time.Since(start)
	if len(reps) != 2 {
		t.Fatalf("%d passes, want 2 (one to see, one after Settle to act)", len(reps))
	}
	if took < 50*time.Millisecond {
		t.Fatalf("took %v: the second pass did not wait for Settle", took)
	}
	want := map[drivers.GlobalID]string{old: "rolled-back", decided: "committed", mine: "prepared", other: "prepared"}
	for g, st := range want {
		if a, b := e.a.State(x(g, 0)), e.b.State(x(g, 1)); a != st || b != st {
			t.Errorf("%s: %s and %s, want %s", g, a, b, st)
		}
	}
	if en, _ := e.log.Lookup(old); en.State != decisionlog.StateAborted {
		t.Errorf("the dead incarnation's orphan: log state %v, want the abort recorded", en.State)
	}
	for _, b := range reps[1].Branches {
		if b.XID.Global == old && (b.Class != Orphan || b.Result != ResultRolledBack) {
			t.Errorf("%s on %s: %s/%s, want orphan/rolled back", b.ID, b.Resource, b.Class, b.Result)
		}
	}
}

// Nothing waiting for the two-scan rule: one pass.
func TestPassSettledOnePassWhenNothingWaits(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DeadBefore = time.Now(); c.Settle = time.Hour })
	e.a.AddPrepared(x(gid("n1", -time.Second, time.Minute), 0)) // began after DeadBefore: within its fence, live
	if reps := e.rec.PassSettled(context.Background()); len(reps) != 1 {
		t.Fatalf("%d passes, want 1", len(reps))
	}
}

// PassSettled returns what it has when its context ends during the wait.
func TestPassSettledStopsWithItsContext(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DeadBefore = time.Now(); c.Settle = time.Hour })
	g := gid("n1", time.Second, time.Minute)
	e.a.AddPrepared(x(g, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	reps := e.rec.PassSettled(ctx)
	if len(reps) != 1 || e.a.State(x(g, 0)) != "prepared" {
		t.Fatalf("%d passes, branch %s: want 1 pass, the branch left prepared", len(reps), e.a.State(x(g, 0)))
	}
}

// In keeper mode the dead incarnation's orphan is fenced in the keeper
// before it is rolled back, and a commit decision the fence finds there
// (one the scan could not read) is committed, DeadBefore or not.
func TestDeadBeforeWithAKeeper(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(e *keeperEnv, g drivers.GlobalID)
		wantState string
		wantRow   string
		wantLog   decisionlog.State
	}{
		{name: "undecided: fenced, then rolled back", setup: func(*keeperEnv, drivers.GlobalID) {},
			wantState: "rolled-back", wantRow: "abort", wantLog: decisionlog.StateAborted},
		{name: "decision unreadable at the scan, found by the fence: committed",
			setup: func(e *keeperEnv, g drivers.GlobalID) {
				e.k.PutDecision(keptCommit(g))
				e.k.FailNext("list-decisions", drivers.ErrRetryable)
				e.k.FailNext("list-decisions", drivers.ErrRetryable)
			},
			wantState: "committed", wantRow: "commit", wantLog: decisionlog.StateNone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeeperEnv(t, true)
			e.rec.cfg.DeadBefore = time.Now()
			g := gid("n1", time.Second, time.Minute) // within its fence
			tc.setup(e, g)
			e.b.AddPrepared(x(g, 1))
			e.twoPasses()
			if s := e.b.State(x(g, 1)); s != tc.wantState {
				t.Fatalf("branch is %s, want %s", s, tc.wantState)
			}
			row, ok := e.k.Rows()[g]
			r := ""
			switch {
			case ok && !row.Abort:
				r = "commit"
			case ok:
				r = "abort"
			}
			if r != tc.wantRow {
				t.Fatalf("keeper row %q, want %q", r, tc.wantRow)
			}
			if en, _ := e.log.Lookup(g); en.State != tc.wantLog {
				t.Fatalf("log state %v, want %v", en.State, tc.wantLog)
			}
		})
	}
}

// A dead process's branch that shows up only after the first pass (its
// PREPARE reached the server late) gets its own two scans within the same
// PassSettled call.
func TestPassSettledCatchesALateBranch(t *testing.T) {
	first, late := gid("n1", time.Second, time.Minute), gid("n1", time.Second, time.Minute)
	var e *env
	passes := 0
	e = newEnv(t, func(c *Config) {
		c.DeadBefore, c.Settle = time.Now(), 20*time.Millisecond
		c.OnReport = func(*Report) {
			if passes++; passes == 1 {
				e.b.AddPrepared(x(late, 1))
			}
		}
	})
	e.a.AddPrepared(x(first, 0))
	reps := e.rec.PassSettled(context.Background())
	if len(reps) != 3 {
		t.Fatalf("%d passes, want 3", len(reps))
	}
	if a, b := e.a.State(x(first, 0)), e.b.State(x(late, 1)); a != "rolled-back" || b != "rolled-back" {
		t.Fatalf("first %s, late %s: want both rolled back", a, b)
	}
	if n := reps[len(reps)-1].Remaining(); n != 0 {
		t.Fatalf("%d left", n)
	}
}
