package recovery

import (
	"context"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// keeperEnv is env with a decision keeper "k" next to resource "b".
type keeperEnv struct {
	log *decisionlog.FileLog
	k   *fakeres.Keeper
	b   *fakeres.Resource
	rec *Recoverer
}

func newKeeperEnv(t *testing.T, fence bool) *keeperEnv {
	t.Helper()
	l, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	e := &keeperEnv{log: l, k: fakeres.NewKeeper("k"), b: fakeres.New("b")}
	cfg := Config{NodeID: "n1", Log: l, Resources: []drivers.Resource{e.k, e.b}, Settle: -1}
	if fence {
		cfg.DecisionResource = "k"
	}
	e.rec, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func keptCommit(g drivers.GlobalID) decisionlog.Decision {
	return decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "b", Branch: 1}}, At: time.Now()}
}

// twoPasses runs the two passes the two-scan rule needs and returns the
// second report.
func (e *keeperEnv) twoPasses() *Report {
	e.rec.Pass(context.Background(), false)
	return e.rec.Pass(context.Background(), false)
}

func TestKeeperDecisions(t *testing.T) {
	tests := []struct {
		name  string
		fence bool
		// setup returns the gtrid of the prepared branch on b.
		setup     func(e *keeperEnv) drivers.GlobalID
		wantClass Class
		wantState string // of the branch on b after two passes
		wantRow   string // "commit", "abort" or "" after two passes
		wantLog   decisionlog.State
	}{
		{
			name: "kept commit decision commits the branch and is deleted",
			setup: func(e *keeperEnv) drivers.GlobalID {
				g := gid("n1", time.Minute, -30*time.Second)
				e.k.PutDecision(keptCommit(g))
				return g
			},
			wantClass: CommitPending, wantState: "committed", wantRow: "", wantLog: decisionlog.StateNone,
		},
		{
			name:  "orphan is fenced in the keeper, then rolled back",
			fence: true,
			setup: func(e *keeperEnv) drivers.GlobalID {
				return gid("n1", time.Minute, -30*time.Second)
			},
			wantClass: Orphan, wantState: "rolled-back", wantRow: "abort", wantLog: decisionlog.StateAborted,
		},
		{
			name:  "abort marker rolls back",
			fence: true,
			setup: func(e *keeperEnv) drivers.GlobalID {
				g := gid("n1", time.Minute, -30*time.Second)
				if c, err := e.k.FenceAbort(context.Background(), g); err != nil || c {
					panic("fence")
				}
				return g
			},
			wantClass: AbortPending, wantState: "rolled-back", wantRow: "abort", wantLog: decisionlog.StateNone,
		},
		{
			name:  "decision unreadable at the scan, found by the fence: committed, no abort in the log",
			fence: true,
			setup: func(e *keeperEnv) drivers.GlobalID {
				g := gid("n1", time.Minute, -30*time.Second)
				e.k.PutDecision(keptCommit(g))
				e.k.FailNext("list-decisions", drivers.ErrRetryable)
				e.k.FailNext("list-decisions", drivers.ErrRetryable)
				return g
			},
			wantClass: CommitPending, wantState: "committed", wantRow: "commit", wantLog: decisionlog.StateNone,
		},
		{
			name:  "within its fence: left alone",
			fence: true,
			setup: func(e *keeperEnv) drivers.GlobalID {
				return gid("n1", time.Second, time.Minute)
			},
			wantClass: Live, wantState: "prepared", wantRow: "", wantLog: decisionlog.StateNone,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeeperEnv(t, tc.fence)
			g := tc.setup(e)
			e.b.AddPrepared(x(g, 1))
			rep := e.twoPasses()
			var got *Branch
			for i := range rep.Branches {
				if rep.Branches[i].XID == x(g, 1) {
					got = &rep.Branches[i]
				}
			}
			if got == nil || got.Class != tc.wantClass {
				t.Fatalf("branch %+v, want class %s", got, tc.wantClass)
			}
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
			en, _ := e.log.Lookup(g)
			if en.State != tc.wantLog {
				t.Fatalf("log state %v, want %v", en.State, tc.wantLog)
			}
		})
	}
}

// Resolve refuses a rollback that the keeper's decision contradicts, and
// fences the keeper before a rollback that agrees.
func TestKeeperResolve(t *testing.T) {
	ctx := context.Background()
	e := newKeeperEnv(t, true)
	committed := gid("n1", time.Minute, -30*time.Second)
	e.k.PutDecision(keptCommit(committed))
	e.b.AddPrepared(x(committed, 1))
	if _, err := e.rec.Resolve(ctx, committed, false, false, "op"); err == nil {
		t.Fatal("rolling back a kept commit decision was not refused")
	}
	if s := e.b.State(x(committed, 1)); s != "prepared" {
		t.Fatalf("branch %s after a refused resolve", s)
	}
	orphan := gid("n1", time.Minute, -30*time.Second)
	e.b.AddPrepared(x(orphan, 1))
	if _, err := e.rec.Resolve(ctx, orphan, false, false, "op"); err != nil {
		t.Fatal(err)
	}
	if row, ok := e.k.Rows()[orphan]; !ok || !row.Abort {
		t.Fatalf("keeper row %+v %v after a rollback resolve, want the abort marker", row, ok)
	}
	if s := e.b.State(x(orphan, 1)); s != "rolled-back" {
		t.Fatalf("branch %s, want rolled back", s)
	}
}

// Abort markers are deleted once past their retention, when nothing of
// the transaction is prepared any more.
func TestKeeperOldAbortMarkersDeleted(t *testing.T) {
	e := newKeeperEnv(t, true)
	old := gid("n1", time.Hour, -time.Hour)
	recent := gid("n1", time.Minute, -30*time.Second)
	for _, g := range []drivers.GlobalID{old, recent} {
		if _, err := e.k.FenceAbort(context.Background(), g); err != nil {
			t.Fatal(err)
		}
	}
	e.rec.Pass(context.Background(), false)
	rows := e.k.Rows()
	if _, ok := rows[old]; ok {
		t.Fatal("an abort marker an hour past its deadline was kept")
	}
	if _, ok := rows[recent]; !ok {
		t.Fatal("a recent abort marker was deleted; it may still be needed as a fence")
	}
}
