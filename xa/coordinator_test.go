package xa

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

type testEnv struct {
	c    *Coordinator
	log  *decisionlog.MemLog
	a, b *fakeres.Resource
}

func newTestEnv(t *testing.T, mod func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{a: fakeres.New("a"), b: fakeres.New("b")}
	e.log = decisionlog.NewMemLog(nil)
	cfg := Config{
		NodeID:          "test",
		Log:             e.log,
		Resources:       []drivers.Resource{e.a, e.b},
		Phase2Timeout:   2 * time.Second,
		RollbackTimeout: 2 * time.Second,
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

// both enlists a and b and returns their XIDs.
func both(ctx context.Context, tx *Tx, a, b drivers.Resource) (drivers.XID, drivers.XID, error) {
	ba, err := tx.Enlist(ctx, a)
	if err != nil {
		return drivers.XID{}, drivers.XID{}, err
	}
	bb, err := tx.Enlist(ctx, b)
	if err != nil {
		return ba.XID(), drivers.XID{}, err
	}
	return ba.XID(), bb.XID(), nil
}

func TestRunOutcomes(t *testing.T) {
	userErr := errors.New("user says no")
	tests := []struct {
		name string
		// setup arms failures before Run.
		setup   func(e *testEnv)
		fn      func(ctx context.Context, tx *Tx, e *testEnv) error
		outcome Outcome
		isErr   error  // the returned error must match this too, if set
		stateA  string // final state of branch a
		stateB  string
		logged  bool // a commit decision was written
	}{
		{
			name:    "commit both",
			outcome: Committed, stateA: "committed", stateB: "committed", logged: true,
		},
		{
			name:    "user error rolls back both",
			fn:      func(context.Context, *Tx, *testEnv) error { return userErr },
			outcome: Aborted, isErr: userErr, stateA: "rolled-back", stateB: "rolled-back",
		},
		{
			name:    "prepare refused on b aborts a",
			setup:   func(e *testEnv) { e.b.FailNext("prepare", drivers.ErrRefused) },
			outcome: Aborted, isErr: drivers.ErrRefused, stateA: "rolled-back", stateB: "rolled-back",
		},
		{
			name:    "prepare in doubt on a aborts both",
			setup:   func(e *testEnv) { e.a.FailNext("prepare", drivers.ErrInDoubt) },
			outcome: Aborted, isErr: drivers.ErrInDoubt, stateA: "rolled-back", stateB: "rolled-back",
		},
		{
			name: "commit error in phase 2 is retried",
			setup: func(e *testEnv) {
				e.a.FailNext("commit", drivers.ErrInDoubt)
				e.a.FailNext("commit", drivers.ErrBusy)
			},
			outcome: Committed, stateA: "committed", stateB: "committed", logged: true,
		},
		{
			name:    "decision log failure leaves both prepared",
			setup:   func(e *testEnv) { e.log.FailWith(errors.New("disk on fire")) },
			outcome: Unknown, isErr: decisionlog.ErrLogFailed, stateA: "prepared", stateB: "prepared",
		},
		{
			name:    "begin failure on b rolls back a",
			setup:   func(e *testEnv) { e.b.FailNext("begin", drivers.ErrRetryable) },
			outcome: Aborted, isErr: drivers.ErrRetryable, stateA: "rolled-back", stateB: "none",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			if tt.setup != nil {
				tt.setup(e)
			}
			var xa, xb drivers.XID
			err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
				var err error
				xa, xb, err = both(ctx, tx, e.a, e.b)
				if err != nil {
					return err
				}
				if tt.fn != nil {
					return tt.fn(ctx, tx, e)
				}
				return nil
			})
			if got := OutcomeOf(err); got != tt.outcome {
				t.Fatalf("outcome = %v (err %v), want %v", got, err, tt.outcome)
			}
			if tt.isErr != nil && !errors.Is(err, tt.isErr) {
				t.Errorf("err = %v, want it to match %v", err, tt.isErr)
			}
			if xb.Global.IsZero() {
				xb = drivers.XID{Global: xa.Global, Branch: 1}
			}
			if got := e.a.State(xa); got != tt.stateA {
				t.Errorf("branch a is %s, want %s", got, tt.stateA)
			}
			if got := e.b.State(xb); got != tt.stateB {
				t.Errorf("branch b is %s, want %s", got, tt.stateB)
			}
			en, ok := e.log.Lookup(xa.Global)
			if logged := ok && en.Decision != nil; logged != tt.logged {
				t.Errorf("decision logged = %v, want %v", logged, tt.logged)
			}
			if tt.logged && en.State != decisionlog.StateDone {
				t.Errorf("log state = %v, want done", en.State)
			}
			if e.c.Active(xa.Global) && tt.outcome != CommitPending {
				t.Errorf("transaction still active after Run returned")
			}
		})
	}
}

func TestOnePhaseForSingleBranch(t *testing.T) {
	e := newTestEnv(t, nil)
	var x drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		b, err := tx.Enlist(ctx, e.a)
		x = b.XID()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.a.State(x); got != "committed" {
		t.Fatalf("branch is %s", got)
	}
	if e.a.Count("prepare") != 0 || e.log.Commits() != 0 {
		t.Fatalf("one-phase commit prepared (%d) or logged (%d)", e.a.Count("prepare"), e.log.Commits())
	}
}

func TestOnePhaseInDoubtIsUnknown(t *testing.T) {
	e := newTestEnv(t, nil)
	e.a.FailNext("commit-one-phase", drivers.ErrInDoubt)
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		_, err := tx.Enlist(ctx, e.a)
		return err
	})
	if !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("err = %v, want ErrOutcomeUnknown", err)
	}
}

func TestReadOnlyBranches(t *testing.T) {
	t.Run("all read-only: no decision, no phase 2", func(t *testing.T) {
		e := newTestEnv(t, nil)
		e.a.ReadOnly, e.b.ReadOnly = true, true
		if err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
			_, _, err := both(ctx, tx, e.a, e.b)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if e.log.Commits() != 0 || e.a.Count("commit")+e.b.Count("commit") != 0 {
			t.Fatalf("read-only transaction logged %d decisions, %d commits", e.log.Commits(), e.a.Count("commit")+e.b.Count("commit"))
		}
	})
	t.Run("one writer: committed without a decision record", func(t *testing.T) {
		e := newTestEnv(t, nil)
		e.a.ReadOnly = true
		var xb drivers.XID
		if err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
			var err error
			_, xb, err = both(ctx, tx, e.a, e.b)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if e.log.Commits() != 0 {
			t.Fatalf("logged a decision for a single writer")
		}
		if got := e.b.State(xb); got != "committed" {
			t.Fatalf("writer is %s", got)
		}
	})
}

func TestPanicRollsBackAndRepanics(t *testing.T) {
	e := newTestEnv(t, nil)
	var xa drivers.XID
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want the original panic", p)
			}
		}()
		_ = e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
			xa, _, _ = both(ctx, tx, e.a, e.b)
			panic("boom")
		})
	}()
	if got := e.a.State(xa); got != "rolled-back" {
		t.Fatalf("branch a is %s after panic", got)
	}
	if e.c.Active(xa.Global) {
		t.Fatal("transaction still active after panic")
	}
}

func TestContextCancelledDuringWorkAborts(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var xa drivers.XID
	err := e.c.Run(ctx, func(ctx context.Context, tx *Tx) error {
		xa, _, _ = both(ctx, tx, e.a, e.b)
		cancel()
		return nil // the callback ignores the cancellation; Run must not
	})
	if !errors.Is(err, ErrAborted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want aborted by context.Canceled", err)
	}
	if got := e.a.State(xa); got != "rolled-back" {
		t.Fatalf("branch a is %s", got)
	}
}

func TestFenceRefusesLateDecision(t *testing.T) {
	// The coordinator's clock says the transaction began an hour ago with
	// a one-second timeout; the log's clock is the real one, so the
	// decision arrives after the deadline and must be refused.
	e := newTestEnv(t, func(c *Config) {
		c.Now = func() time.Time { return time.Now().Add(-time.Hour) }
		c.Timeout = time.Second
	})
	var xa, xb drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		var err error
		xa, xb, err = both(ctx, tx, e.a, e.b)
		return err
	})
	// The work context already ended at the (past) deadline, so either the
	// work check or the log's fence stops it; both must abort.
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err = %v, want ErrAborted", err)
	}
	if e.a.State(xa) != "rolled-back" || e.b.State(xb) != "rolled-back" {
		t.Fatalf("branches %s/%s, want rolled back", e.a.State(xa), e.b.State(xb))
	}
	if e.log.Commits() != 0 {
		t.Fatal("a commit decision was written after the fence")
	}
}

func TestFenceRecordedAbortWins(t *testing.T) {
	// Recovery recorded an abort for the transaction while it was preparing:
	// the decision must be refused and the branches rolled back.
	e := newTestEnv(t, nil)
	var xa, xb drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		var err error
		xa, xb, err = both(ctx, tx, e.a, e.b)
		if err != nil {
			return err
		}
		return e.log.Abort(ctx, decisionlog.Action{GTRID: tx.GlobalID(), Op: "presume-abort", Actor: "test"})
	})
	if !errors.Is(err, decisionlog.ErrFenced) || !Retryable(err) {
		t.Fatalf("err = %v, want a retryable decisionlog.ErrFenced abort", err)
	}
	if e.a.State(xa) != "rolled-back" || e.b.State(xb) != "rolled-back" {
		t.Fatalf("branches %s/%s, want rolled back", e.a.State(xa), e.b.State(xb))
	}
}

func TestPhase2PendingThenFinishes(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Phase2Timeout = 50 * time.Millisecond })
	release := e.b.Block("commit")
	var ended sync.WaitGroup
	ended.Add(1)
	e.c.cfg.Hook = func(s Step, _ StepInfo) {
		if s == StepEnded {
			ended.Done()
		}
	}
	var xa, xb drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		var err error
		xa, xb, err = both(ctx, tx, e.a, e.b)
		return err
	})
	if !errors.Is(err, ErrCommitPending) || OutcomeOf(err) != CommitPending {
		t.Fatalf("err = %v, want ErrCommitPending", err)
	}
	if !e.c.Active(xa.Global) {
		t.Fatal("pending transaction not active")
	}
	close(release)
	ended.Wait()
	if e.a.State(xa) != "committed" || e.b.State(xb) != "committed" {
		t.Fatalf("branches %s/%s, want committed", e.a.State(xa), e.b.State(xb))
	}
	if en, _ := e.log.Lookup(xa.Global); en.State != decisionlog.StateDone {
		t.Fatalf("log state %v, want done", en.State)
	}
}

func TestCloseLeavesPendingDecisionAndRestartFinishesIt(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Phase2Timeout = 20 * time.Millisecond })
	e.b.Block("commit") // never released: phase 2 on b hangs until Close
	var xa, xb drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		var err error
		xa, xb, err = both(ctx, tx, e.a, e.b)
		return err
	})
	if !errors.Is(err, ErrCommitPending) {
		t.Fatalf("err = %v", err)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.b.State(xb); got != "prepared" {
		t.Fatalf("b is %s after Close, want prepared", got)
	}
	if p := e.log.Pending(); len(p) != 1 || p[0].GTRID != xa.Global {
		t.Fatalf("pending = %v", p)
	}

	// A new coordinator on the same log finishes phase 2 by XID.
	e.b.Unblock("commit")
	ended := make(chan struct{})
	c2, err := New(context.Background(), Config{
		NodeID: "test", Log: e.log, Resources: []drivers.Resource{e.a, e.b},
		Hook: func(s Step, info StepInfo) {
			if s == StepEnded && info.GTRID == xa.Global {
				close(ended)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("restart did not finish phase 2: b is %s", e.b.State(xb))
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.b.State(xb); got != "committed" {
		t.Fatalf("b is %s after restart, want committed", got)
	}
	if p := e.log.Pending(); len(p) != 0 {
		t.Fatalf("still pending after restart: %v", p)
	}
}

func TestEnlist(t *testing.T) {
	e := newTestEnv(t, nil)
	stranger := fakeres.New("stranger")
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		b1, err := tx.Enlist(ctx, e.a)
		if err != nil {
			return err
		}
		b2, err := tx.Enlist(ctx, e.a)
		if err != nil {
			return err
		}
		if b1 != b2 {
			t.Error("enlisting the same resource twice made two branches")
		}
		if _, err := tx.Enlist(ctx, stranger); err == nil {
			t.Error("enlisting an unregistered resource succeeded")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidation(t *testing.T) {
	a := fakeres.New("a")
	tests := []struct {
		name string
		cfg  Config
	}{
		{"empty node id", Config{Log: decisionlog.NewMemLog(nil)}},
		{"hostile node id", Config{NodeID: "x'; drop", Log: decisionlog.NewMemLog(nil)}},
		{"no log", Config{NodeID: "n"}},
		{"duplicate resource", Config{NodeID: "n", Log: decisionlog.NewMemLog(nil), Resources: []drivers.Resource{a, a}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := New(context.Background(), tt.cfg); err == nil {
				c.Close()
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func TestConcurrentTransactions(t *testing.T) {
	e := newTestEnv(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
				_, _, err := both(ctx, tx, e.a, e.b)
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.a.PreparedXIDs()) + len(e.b.PreparedXIDs()); n != 0 {
		t.Fatalf("%d branches left prepared", n)
	}
	if e.log.Commits() != 64 {
		t.Fatalf("%d decisions, want 64", e.log.Commits())
	}
}

func TestIDsAreOrderedAndUnique(t *testing.T) {
	now := time.Now()
	g := newIDGen("n1", now)
	seen := map[string]bool{}
	var prev drivers.GlobalID
	for i := 0; i < 1000; i++ {
		// The clock steps back half way: ids must still not go backwards.
		at := now
		if i > 500 {
			at = now.Add(-time.Minute)
		}
		id, err := g.next(at, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		s := id.String()
		if seen[s] {
			t.Fatalf("duplicate id %s", s)
		}
		seen[s] = true
		if i > 0 && id.Begin().Before(prev.Begin()) {
			t.Fatalf("id %s begins before %s", s, prev)
		}
		if back, err := drivers.ParseGlobalID(s); err != nil || back != id {
			t.Fatalf("round trip %s: %v %v", s, back, err)
		}
		prev = id
	}
}

func TestIDsNeverBeginBeforeStart(t *testing.T) {
	start := time.Date(2026, 3, 4, 5, 6, 7, 891_234_567, time.UTC)
	tests := []struct {
		name string
		now  time.Time // the clock when the id is made
		want time.Time // its begin
	}{
		{name: "after the start", now: start.Add(time.Second), want: start.Add(time.Second).Truncate(time.Millisecond)},
		{name: "at the start", now: start, want: start.Truncate(time.Millisecond)},
		{name: "the clock stepped back before the start", now: start.Add(-time.Hour), want: start.Truncate(time.Millisecond)},
		{name: "within the start's millisecond, earlier", now: start.Truncate(time.Millisecond), want: start.Truncate(time.Millisecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newIDGen("n1", start)
			if got, want := g.started(), start.Truncate(time.Millisecond); !got.Equal(want) {
				t.Fatalf("started = %v, want %v", got, want)
			}
			id, err := g.next(tt.now, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if !id.Begin().Equal(tt.want) {
				t.Fatalf("begin = %v, want %v", id.Begin(), tt.want)
			}
			if id.Begin().Before(g.started()) {
				t.Fatalf("id %s begins before the start %v", id, g.started())
			}
		})
	}
}

func TestCoordinatorStarted(t *testing.T) {
	// The clock steps back an hour after New: the coordinator's ids still
	// begin at or after Started, so an earlier incarnation's (which began
	// before it) can be told from this one's by the XID alone.
	start := time.Now().UTC()
	var mu sync.Mutex
	now := start
	e := newTestEnv(t, func(c *Config) {
		c.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	if got, want := e.c.Started(), start.Truncate(time.Millisecond); !got.Equal(want) {
		t.Fatalf("Started = %v, want %v", got, want)
	}
	mu.Lock()
	now = start.Add(-time.Hour)
	mu.Unlock()
	tx, err := e.c.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if b := tx.GlobalID().Begin(); b.Before(e.c.Started()) {
		t.Fatalf("a transaction began at %v, before the coordinator started (%v)", b, e.c.Started())
	}
}
