package xa

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// The protocol's pure decisions, without I/O.

func TestPlanAfterVotes(t *testing.T) {
	for _, tt := range []struct {
		voters int
		keeper bool
		want   commitPlan
	}{
		{0, false, planNothingLeft},
		{0, true, planKeeperAlone},
		{1, false, planSingleVoter},
		{1, true, planDecide}, // the keeper's commit is the decision for both
		{2, false, planDecide},
		{3, true, planDecide},
	} {
		if got := planAfterVotes(tt.voters, tt.keeper); got != tt.want {
			t.Errorf("planAfterVotes(%d, keeper=%v) = %d, want %d", tt.voters, tt.keeper, got, tt.want)
		}
	}
}

// Only an answer that proves nothing was decided aborts; everything else is
// fail-stop (DESIGN rule 6).
func TestDecisionRefused(t *testing.T) {
	fenced := fmt.Errorf("late: %w", decisionlog.ErrFenced)
	kind := func(k error) error { return &drivers.Error{Kind: k, Err: errors.New("db")} }
	for _, tt := range []struct {
		name        string
		err         error
		log, keeper bool
	}{
		{"fenced", fenced, true, true},
		{"log failed", fmt.Errorf("%w: fsync", decisionlog.ErrLogFailed), false, false},
		{"unclassified", errors.New("what happened?"), false, false},
		{"refused", kind(drivers.ErrRefused), false, true},
		{"failed", kind(drivers.ErrFailed), false, true},
		{"retryable", kind(drivers.ErrRetryable), false, true},
		{"in doubt", kind(drivers.ErrInDoubt), false, false},
		{"busy", kind(drivers.ErrBusy), false, false},
		{"in doubt and refused", errors.Join(kind(drivers.ErrInDoubt), kind(drivers.ErrRefused)), false, false},
	} {
		if got := logRefused(tt.err); got != tt.log {
			t.Errorf("%s: logRefused = %v, want %v", tt.name, got, tt.log)
		}
		if got := keeperRefused(tt.err); got != tt.keeper {
			t.Errorf("%s: keeperRefused = %v, want %v", tt.name, got, tt.keeper)
		}
	}
}

func TestHandoffOutcome(t *testing.T) {
	if handoffOutcome(true) != CommitPending || handoffOutcome(false) != Unknown {
		t.Fatal("an unfinished phase 2 is commit-pending only once a decision is durable")
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{OpNone: "", OpWork: "work", OpDecide: "decide", OpCommit: "commit", OpCommitOnePhase: "commit-one-phase", Op(200): "invalid"} {
		if got := op.String(); got != want {
			t.Errorf("Op(%d).String() = %q, want %q", op, got, want)
		}
	}
}

// The decision keeper's path reports the same steps as the log's, with the
// keeper's branch committing with the decision instead of preparing.
func TestKeeperSteps(t *testing.T) {
	var l stepLog
	e := newKeeperEnv(t, func(c *Config) { c.Hook = l.hook })
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		_, _, err := both(ctx, tx, e.k, e.b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "begin enlisted*2 work-done preparing prepared all-prepared deciding decided committed*2 committing all-committed ended finished"
	if got := l.sequence(); got != want {
		t.Fatalf("steps:\n  %s\nwant\n  %s", got, want)
	}
	if c := l.get(StepCommitted); len(c) != 2 || c[0].Resource != "pg" {
		t.Fatalf("committed steps %+v: want the keeper's first, with the decision", c)
	}
}
