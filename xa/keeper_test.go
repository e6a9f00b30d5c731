package xa

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

type keeperEnv struct {
	c    *Coordinator
	log  *decisionlog.MemLog
	k    *fakeres.Keeper
	b, d *fakeres.Resource
	// forgotten receives the ids of every ForgetDecisions call.
	forgotten chan []drivers.GlobalID
}

func newKeeperEnv(t *testing.T, mod func(*Config)) *keeperEnv {
	t.Helper()
	e := &keeperEnv{k: fakeres.NewKeeper("pg"), b: fakeres.New("mysql"), d: fakeres.New("other"),
		forgotten: make(chan []drivers.GlobalID, 100)}
	e.k.OnForget = func(gs []drivers.GlobalID) { e.forgotten <- gs }
	e.log = decisionlog.NewMemLog(nil)
	cfg := Config{
		NodeID:           "test",
		Log:              e.log,
		Resources:        []drivers.Resource{e.k, e.b, e.d},
		DecisionResource: "pg",
		Phase2Timeout:    2 * time.Second,
		RollbackTimeout:  2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	t.Cleanup(func() { _ = c.Close() })
	return e
}

// waitForgotten waits until g's row was deleted by the coordinator's
// background cleanup.
func (e *keeperEnv) waitForgotten(t *testing.T, g drivers.GlobalID) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case gs := <-e.forgotten:
			for _, x := range gs {
				if x == g {
					return
				}
			}
		case <-timeout:
			t.Fatalf("the decision row of %s was not deleted", g)
		}
	}
}

func TestKeeperCommitOutcomes(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(e *keeperEnv)
		hook    func(e *keeperEnv, s Step, info StepInfo)
		outcome Outcome
		stateK  string // keeper branch
		stateB  string // the other branch
		row     string // "commit", "abort" or "" (none) after the transaction
	}{
		{
			name:    "decision in the keeper's commit",
			outcome: Committed, stateK: "committed", stateB: "committed", row: "",
		},
		{
			name: "abort marker first: decision refused",
			hook: func(e *keeperEnv, s Step, info StepInfo) {
				if s == StepAllPrepared {
					if committed, err := e.k.FenceAbort(context.Background(), info.GTRID); err != nil || committed {
						panic("fence failed")
					}
				}
			},
			outcome: Aborted, stateK: "rolled-back", stateB: "rolled-back", row: "abort",
		},
		{
			name:    "keeper refuses",
			setup:   func(e *keeperEnv) { e.k.FailNext("commit-with-decision", drivers.ErrRefused) },
			outcome: Aborted, stateK: "rolled-back", stateB: "rolled-back",
		},
		{
			name:    "keeper in doubt before committing",
			setup:   func(e *keeperEnv) { e.k.FailNext("commit-with-decision", drivers.ErrInDoubt) },
			outcome: Unknown, stateK: "active", stateB: "prepared",
		},
		{
			name:    "keeper in doubt after committing",
			setup:   func(e *keeperEnv) { e.k.Lost = true },
			outcome: Unknown, stateK: "committed", stateB: "prepared", row: "commit",
		},
		{
			name:    "other branch refuses to prepare",
			setup:   func(e *keeperEnv) { e.b.FailNext("prepare", drivers.ErrRefused) },
			outcome: Aborted, stateK: "rolled-back", stateB: "rolled-back",
		},
		{
			name:    "other branch read-only: keeper commits alone",
			setup:   func(e *keeperEnv) { e.b.ReadOnly = true },
			outcome: Committed, stateK: "committed", stateB: "none",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeeperEnv(t, nil)
			if tc.setup != nil {
				tc.setup(e)
			}
			if tc.hook != nil {
				e.c.cfg.Hook = func(s Step, info StepInfo) { tc.hook(e, s, info) }
			}
			var xk, xb drivers.XID
			err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
				var err error
				xk, xb, err = both(ctx, tx, e.k, e.b)
				return err
			})
			if got := OutcomeOf(err); got != tc.outcome {
				t.Fatalf("outcome %v (%v), want %v", got, err, tc.outcome)
			}
			if got := e.k.State(xk); got != tc.stateK {
				t.Errorf("keeper branch is %s, want %s", got, tc.stateK)
			}
			if got := e.b.State(xb); got != tc.stateB {
				t.Errorf("other branch is %s, want %s", got, tc.stateB)
			}
			if n := e.k.Count("prepare"); n != 0 {
				t.Errorf("the keeper prepared %d times; it must never prepare", n)
			}
			if e.log.Commits() != 0 {
				t.Errorf("%d decisions went to the log; the keeper holds them", e.log.Commits())
			}
			if tc.outcome == Committed && tc.stateB == "committed" {
				e.waitForgotten(t, xk.Global)
			}
			row, ok := e.k.Rows()[xk.Global]
			got := ""
			switch {
			case ok && !row.Abort:
				got = "commit"
			case ok:
				got = "abort"
			}
			if got != tc.row {
				t.Errorf("decision row %q, want %q", got, tc.row)
			}
			if got == "commit" && (len(row.Participants) != 1 || row.Participants[0] != (decisionlog.Participant{Resource: "mysql", Branch: xb.Branch})) {
				t.Errorf("participants %v, want just the mysql branch", row.Participants)
			}
		})
	}
}

// Transactions that do not enlist the keeper decide in the log as usual.
func TestKeeperNotEnlistedUsesLog(t *testing.T) {
	e := newKeeperEnv(t, nil)
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		_, _, err := both(ctx, tx, e.b, e.d)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.log.Commits() != 1 || len(e.k.Rows()) != 0 {
		t.Fatalf("log commits %d, keeper rows %d: want the decision in the log", e.log.Commits(), len(e.k.Rows()))
	}
}

// With AsyncPhase2 Run returns once the keeper committed; phase 2 and the
// row's deletion follow.
func TestKeeperAsyncPhase2(t *testing.T) {
	e := newKeeperEnv(t, func(c *Config) { c.AsyncPhase2 = true })
	release := e.b.Block("commit")
	var xk, xb drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		var err error
		xk, xb, err = both(ctx, tx, e.k, e.b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.b.State(xb); got != "prepared" {
		t.Fatalf("other branch is %s while its phase 2 is blocked, want prepared", got)
	}
	if _, ok := e.k.Rows()[xk.Global]; !ok {
		t.Fatal("no decision row while phase 2 is running")
	}
	close(release)
	e.waitForgotten(t, xk.Global)
	if got := e.b.State(xb); got != "committed" {
		t.Fatalf("other branch is %s, want committed", got)
	}
}

// A coordinator that starts finds the keeper's decisions of its node and
// finishes their phase 2.
func TestKeeperResumeAtStart(t *testing.T) {
	k, b := fakeres.NewKeeper("pg"), fakeres.New("mysql")
	now := time.Now().UTC().Truncate(time.Millisecond)
	mine := drivers.MustGlobalID("test", now, 1, now.Add(time.Minute))
	other := drivers.MustGlobalID("other", now, 2, now.Add(time.Minute))
	for _, g := range []drivers.GlobalID{mine, other} {
		k.PutDecision(decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "mysql", Branch: 1}}, At: now})
		b.AddPrepared(drivers.XID{Global: g, Branch: 1})
	}
	forgotten := make(chan []drivers.GlobalID, 10)
	k.OnForget = func(gs []drivers.GlobalID) { forgotten <- gs }
	c, err := New(context.Background(), Config{NodeID: "test", Log: decisionlog.NewMemLog(nil),
		Resources: []drivers.Resource{k, b}, DecisionResource: "pg"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case gs := <-forgotten:
		if len(gs) != 1 || gs[0] != mine {
			t.Fatalf("forgot %v, want only %s", gs, mine)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the resumed decision was not finished")
	}
	if got := b.State(drivers.XID{Global: mine, Branch: 1}); got != "committed" {
		t.Fatalf("own branch %s, want committed", got)
	}
	if got := b.State(drivers.XID{Global: other, Branch: 1}); got != "prepared" {
		t.Fatalf("another node's branch %s, want left prepared", got)
	}
}

func TestKeeperConfig(t *testing.T) {
	tests := []struct {
		name, keeper, want string
	}{
		{"unknown resource", "nope", `DecisionResource "nope" is not one of the resources`},
		{"not a keeper", "mysql", `cannot keep decisions`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), Config{NodeID: "test", Log: decisionlog.NewMemLog(func() time.Time { return time.Unix(0, 0) }),
				Resources: []drivers.Resource{fakeres.NewKeeper("pg"), fakeres.New("mysql")}, DecisionResource: tc.keeper})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// The forgetter batches: many finished transactions, few deletes.
func TestKeeperCleanupIsBatched(t *testing.T) {
	e := newKeeperEnv(t, nil)
	const n = 200
	for range n {
		if err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
			_, _, err := both(ctx, tx, e.k, e.b)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.c.Close(); err != nil { // flushes the queue
		t.Fatal(err)
	}
	if rows := e.k.Rows(); len(rows) != 0 {
		t.Fatalf("%d decision rows left after Close", len(rows))
	}
	calls, deleted := 0, 0
	for len(e.forgotten) > 0 {
		deleted += len(<-e.forgotten)
		calls++
	}
	if deleted != n || calls >= n/2 {
		t.Fatalf("%d rows deleted in %d statements, want %d rows in far fewer statements", deleted, calls, n)
	}
}
