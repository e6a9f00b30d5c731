package pgstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
)

// CommitDelay holds a batch open so that later decisions share its round
// trip; a full batch ends the wait at once, so this test never waits the
// (hour-long) delay. The answers are those without a delay: every commit
// durable, nothing else written.
func TestCommitDelayFillsBatch(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	const n = 8
	s := openStore(t, pool, schema, "cd", func(o *Options) { o.CommitDelay, o.MaxBatch = time.Hour, n })
	// Concurrency first, as after a batch of several decisions (set before
	// the writer sees a request: the queue's lock orders it).
	s.lastWaiters = 2
	var wg sync.WaitGroup
	errs := make([]error, n)
	gs := make([]string, n)
	for i := range n {
		wg.Go(func() {
			g := liveGid("cd")
			gs[i] = g.String()
			errs[i] = s.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	if st := s.Stats(); st.Batches != 1 || st.Requests != n || st.Commits != n {
		t.Fatalf("stats %+v: want the %d commits in one statement", st, n)
	}
	if got := len(s.Pending()); got != n {
		t.Fatalf("%d pending, want %d", got, n)
	}
}

// A lone client never waits the commit delay: the previous batch held one
// decision.
func TestCommitDelaySerialNeverWaits(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	s := openStore(t, pool, testSchema(t, pool), "cs", func(o *Options) { o.CommitDelay = time.Hour })
	done := make(chan error, 1)
	go func() {
		for range 20 {
			g := liveGid("cs")
			if err := s.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
				done <- err
				return
			}
			if err := s.End(g); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serial decisions are waiting for the commit delay")
	}
}

// Close ends a commit delay: a decision held in it is written at once, and
// durable.
func TestCloseEndsCommitDelay(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "cc", func(o *Options) { o.CommitDelay = time.Hour })
	s.lastWaiters = 2 // as after a batch of concurrent decisions
	g := liveGid("cc")
	res := make(chan error, 1)
	go func() { res <- s.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: parts()}) }()
	waitFor(t, 10*time.Second, "the writer holding the decision in its delay", func() bool {
		s.qmu.Lock()
		defer s.qmu.Unlock()
		return s.delayNeed > 0
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("the delayed decision failed at Close: %v", err)
	}
	other := openStore(t, pool, schema, "cc2", nil)
	if e, found, err := other.LookupContext(ctxT(t), g); err != nil || !found || e.State != decisionlog.StateCommitted {
		t.Fatalf("read by another store: %+v, %v, %v; want committed", e, found, err)
	}
}

// A batch held open stops before a gtrid it already holds (a statement
// touches a row once, and requests of one gtrid keep their order): a
// decision repeated while the first is held in the delay goes in the next
// statement, and both answer nil.
func TestCommitDelayKeepsOneRowPerGtrid(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "cg", func(o *Options) { o.CommitDelay = 300 * time.Millisecond })
	s.lastWaiters = 2
	d := decisionlog.Decision{GTRID: liveGid("cg"), Participants: parts()}
	first := make(chan error, 1)
	go func() { first <- s.Commit(context.Background(), d) }()
	waitFor(t, 10*time.Second, "the writer holding the decision in its delay", func() bool {
		s.qmu.Lock()
		defer s.qmu.Unlock()
		return s.delayNeed > 0
	})
	if err := s.Commit(ctxT(t), d); err != nil {
		t.Fatalf("the repeat: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("the first: %v", err)
	}
	if st := s.Stats(); st.Batches != 2 || st.Commits != 2 || st.Requests != 2 {
		t.Fatalf("stats %+v: want the decision and its repeat in two statements", st)
	}
	if got := len(s.Pending()); got != 1 {
		t.Fatalf("%d pending, want 1", got)
	}
}
