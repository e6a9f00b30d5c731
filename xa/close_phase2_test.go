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

// Close during phase 2 stops the retries; Commit must then not report
// success for a branch still prepared. With one writing branch (the other
// read-only) there is no decision record, so the outcome is unknown; with
// a logged decision it is commit-pending.
func TestCloseDuringPhase2IsNotReportedCommitted(t *testing.T) {
	for _, tt := range []struct {
		name     string
		readOnly bool // b votes read-only: a alone commits, with no decision
		want     error
	}{
		{"single voter, no decision", true, ErrOutcomeUnknown},
		{"two voters, logged decision", false, ErrCommitPending},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var closing sync.Once
			var e *testEnv
			e = newTestEnv(t, func(c *Config) {
				c.Hook = func(s Step, info StepInfo) {
					if s == StepCommitting && info.Resource == "a" {
						// A graceful shutdown while a's commit is in flight.
						closing.Do(func() { go func() { _ = e.c.Close() }() })
					}
				}
			})
			e.b.ReadOnly = tt.readOnly
			e.a.Block("commit")
			ctx := context.Background()
			tx, err := e.c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			xa, _, err := both(ctx, tx, e.a, e.b)
			if err != nil {
				t.Fatal(err)
			}
			err = tx.Commit(ctx)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Commit = %v, want %v", err, tt.want)
			}
			if got := e.a.State(xa); got != "prepared" {
				t.Fatalf("branch a is %s, want prepared (left to recovery)", got)
			}
			if _, logged := e.log.Lookup(tx.GlobalID()); logged == tt.readOnly {
				t.Errorf("decision logged = %v, want %v", logged, !tt.readOnly)
			}
		})
	}
}

// Concurrent Close calls each return only once the coordinator is closed,
// its owned log included (so another process may open it at once).
func TestConcurrentClose(t *testing.T) {
	dir := t.TempDir()
	c, err := New(context.Background(), Config{NodeID: "test", LogDir: dir, Resources: []drivers.Resource{fakeres.New("a")}})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	var opening sync.Mutex // the checks' own opens must not meet
	for range 3 {
		go func() {
			if err := c.Close(); err != nil {
				errs <- err
				return
			}
			opening.Lock()
			defer opening.Unlock()
			l, err := decisionlog.OpenFileLog(dir, decisionlog.FileLogOptions{})
			if err == nil {
				err = l.Close()
			}
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("after Close returned: %v", err)
		}
	}
}

// New resumes a logged decision's phase 2 only after ResumeDelay (a dead
// process's MariaDB sessions may still be detaching), and Close during
// that wait attempts nothing, leaving the branches to the next start.
func TestResumeWaitsResumeDelay(t *testing.T) {
	ctx := context.Background()
	log := decisionlog.NewMemLog(nil)
	a := fakeres.New("a")
	g := drivers.MustGlobalID("test", time.Now().UTC().Truncate(time.Millisecond), 1, time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond))
	a.AddPrepared(drivers.XID{Global: g})
	if err := log.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}}}); err != nil {
		t.Fatal(err)
	}
	const delay = 200 * time.Millisecond
	committing := make(chan time.Time, 1)
	start := time.Now()
	c, err := New(ctx, Config{NodeID: "test", Log: log, Resources: []drivers.Resource{a}, ResumeDelay: delay,
		Hook: func(s Step, info StepInfo) {
			if s == StepCommitting {
				committing <- time.Now()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if at := <-committing; at.Sub(start) < delay {
		t.Errorf("phase 2 resumed after %v, before ResumeDelay %v", at.Sub(start), delay)
	}
	_ = c.Close()

	// Closed during the wait: no attempt, the decision stays pending.
	g2 := drivers.MustGlobalID(g.Node(), g.Begin(), 2, g.Deadline())
	if err := log.Commit(ctx, decisionlog.Decision{GTRID: g2, Participants: []decisionlog.Participant{{Resource: "a"}}}); err != nil {
		t.Fatal(err)
	}
	b := fakeres.New("a")
	b.AddPrepared(drivers.XID{Global: g2})
	c2, err := New(ctx, Config{NodeID: "test", Log: log, Resources: []drivers.Resource{b}, ResumeDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Active(g2) {
		t.Fatal("the resumed decision is not tracked while it waits")
	}
	_ = c2.Close()
	if n := b.Count("commit-prepared"); n != 0 {
		t.Errorf("%d commit attempts after Close during the resume delay", n)
	}
	if len(log.Pending()) != 1 {
		t.Errorf("pending decisions %v, want g2's", log.Pending())
	}
}
