package xa

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

func TestSetLabel(t *testing.T) {
	for _, tc := range []struct {
		label string
		ok    bool
	}{
		{"", true},
		{"order-123", true},
		{"Order_42/EU#7@shop+1:x.y", true},
		{strings.Repeat("a", drivers.MaxLabelLen), true},
		{strings.Repeat("a", drivers.MaxLabelLen+1), false},
		{"order 123", false},
		{"o'1", false},
		{"tab\there", false},
		{"ordre-é", false},
	} {
		e := newTestEnv(t, nil)
		tx, err := e.c.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		err = tx.SetLabel(tc.label)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrLabel)) {
			t.Errorf("SetLabel(%q) = %v, want ok=%v", tc.label, err, tc.ok)
		}
		want := tc.label
		if !tc.ok {
			want = "" // a refused label changes nothing
		}
		if tx.Label() != want {
			t.Errorf("after SetLabel(%q): Label() = %q", tc.label, tx.Label())
		}
		b, err := tx.Enlist(context.Background(), e.a)
		if err != nil {
			t.Fatal(err)
		}
		if b.XID().Label != want {
			t.Errorf("branch XID %v, want label %q", b.XID(), want)
		}
		if err := tx.Rollback(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// After the first Enlist a different label is refused (the branch's XID
// already carries the old one), the same one accepted; after the end,
// ErrTxDone.
func TestSetLabelAfterEnlist(t *testing.T) {
	e := newTestEnv(t, nil)
	ctx := context.Background()
	tx, err := e.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.SetLabel("first"); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetLabel("second"); err != nil { // no branch yet: may change
		t.Fatal(err)
	}
	if _, err := tx.Enlist(ctx, e.a); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetLabel("third"); !errors.Is(err, ErrLabel) || !strings.Contains(err.Error(), "after the first branch") {
		t.Errorf("SetLabel after Enlist = %v", err)
	}
	if err := tx.SetLabel("second"); err != nil {
		t.Errorf("SetLabel of the same label = %v", err)
	}
	b, err := tx.Enlist(ctx, e.b)
	if err != nil {
		t.Fatal(err)
	}
	if b.XID().Label != "second" {
		t.Errorf("second branch XID %v", b.XID())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetLabel("late"); !errors.Is(err, ErrTxDone) {
		t.Errorf("SetLabel after Commit = %v", err)
	}
}

// A labelled transaction: every branch carries the label, the decision
// holds it, hooks report it, and an error names it.
func TestLabelTravels(t *testing.T) {
	var mu sync.Mutex
	hookLabels := map[Step]string{}
	e := newTestEnv(t, func(c *Config) {
		c.Hook = func(s Step, info StepInfo) {
			if s == StepEnlisted || s == StepFinished {
				mu.Lock()
				hookLabels[s] = info.Label
				mu.Unlock()
			}
		}
	})
	ctx := context.Background()
	var xa, xb drivers.XID
	var decided decisionlog.Decision
	err := e.c.Run(ctx, func(ctx context.Context, tx *Tx) error {
		if err := tx.SetLabel("order-123"); err != nil {
			return err
		}
		var err error
		xa, xb, err = both(ctx, tx, e.a, e.b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if xa.Label != "order-123" || xb.Label != "order-123" || !strings.HasSuffix(xa.GID(), ":00.order-123") {
		t.Fatalf("XIDs %v %v", xa, xb)
	}
	if e.a.State(xa) != "committed" || e.b.State(xb) != "committed" {
		t.Fatalf("states %s %s", e.a.State(xa), e.b.State(xb))
	}
	if en, ok := e.log.Lookup(xa.Global); ok && en.Decision != nil {
		decided = *en.Decision
	}
	if decided.Label != "order-123" {
		t.Errorf("decision = %+v", decided)
	}
	mu.Lock()
	if hookLabels[StepEnlisted] != "order-123" || hookLabels[StepFinished] != "order-123" {
		t.Errorf("hook labels = %v", hookLabels)
	}
	mu.Unlock()

	// An aborted labelled transaction's error names the label.
	e.b.FailNext("prepare", drivers.ErrRefused)
	err = e.c.Run(ctx, func(ctx context.Context, tx *Tx) error {
		if err := tx.SetLabel("order-124"); err != nil {
			return err
		}
		_, _, err := both(ctx, tx, e.a, e.b)
		return err
	})
	var xe *Error
	if !errors.As(err, &xe) || xe.Label != "order-124" || !strings.Contains(err.Error(), "[order-124 ") {
		t.Fatalf("err = %v", err)
	}
	// An unlabelled one's does not change.
	err = e.c.Run(ctx, func(context.Context, *Tx) error { return errors.New("no") })
	if !errors.As(err, &xe) || xe.Label != "" || !strings.Contains(err.Error(), " [test.") {
		t.Fatalf("unlabelled err = %v", err)
	}
}

// A labelled decision resumed after a restart is finished under the
// labelled XIDs: the label is part of the bqual, so a resume that dropped
// it would miss the prepared branch and take "not found" for done.
func TestLabelledDecisionResumedAfterRestart(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Phase2Timeout = 20 * time.Millisecond })
	e.b.Block("commit")
	var xb drivers.XID
	err := e.c.Run(context.Background(), func(ctx context.Context, tx *Tx) error {
		if err := tx.SetLabel("order-9"); err != nil {
			return err
		}
		var err error
		_, xb, err = both(ctx, tx, e.a, e.b)
		return err
	})
	if !errors.Is(err, ErrCommitPending) {
		t.Fatalf("err = %v", err)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.b.State(xb); got != "prepared" {
		t.Fatalf("b is %s after Close", got)
	}
	e.b.Unblock("commit")
	ended := make(chan struct{})
	c2, err := New(context.Background(), Config{
		NodeID: "test", Log: e.log, Resources: []drivers.Resource{e.a, e.b},
		Hook: func(s Step, info StepInfo) {
			if s == StepEnded && info.GTRID == xb.Global {
				close(ended)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("restart did not finish phase 2: b is %s", e.b.State(xb))
	}
	if got := e.b.State(xb); got != "committed" {
		t.Fatalf("labelled branch is %s after restart, want committed", got)
	}
}

// BenchmarkRunLabel compares an unlabelled and a labelled transaction on
// in-memory resources and log: the label's cost in the coordinator itself
// (it adds no round trip and no write; only longer XIDs).
func BenchmarkRunLabel(b *testing.B) {
	for _, label := range []string{"", "order-1234567890"} {
		b.Run("label="+label, func(b *testing.B) {
			a, other := fakeres.New("a"), fakeres.New("b")
			c, err := New(context.Background(), Config{NodeID: "bench", Log: decisionlog.NewMemLog(nil), Resources: []drivers.Resource{a, other}})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			fn := func(ctx context.Context, tx *Tx) error {
				if label != "" {
					if err := tx.SetLabel(label); err != nil {
						return err
					}
				}
				_, _, err := both(ctx, tx, a, other)
				return err
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Run(ctx, fn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
