package pgstore

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
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

// EndDelay: an End, which nobody waits for, does not cost a statement of its
// own while decisions keep coming: it rides the next decision's batch. The
// (hour-long) hold ends when that decision is queued, so the test never
// waits it; Close writes the last end.
func TestEndsRideWithDecisions(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "er", func(o *Options) { o.EndDelay = time.Hour })
	const n = 10
	gs := make([]drivers.GlobalID, n)
	for i := range n {
		gs[i] = liveGid("er")
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: gs[i], Participants: parts()}); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		if err := s.End(gs[i]); err != nil {
			t.Fatalf("end %d: %v", i, err)
		}
		// This store shows the end at once, written or not.
		if e, found := s.Lookup(gs[i]); !found || e.State != decisionlog.StateDone {
			t.Fatalf("end %d: this store's Lookup says %+v, %v; want done", i, e, found)
		}
	}
	// One statement per decision: each end went with the next decision;
	// the last is held.
	if st := s.Stats(); st.Batches != n || st.Commits != n || st.Ends != n-1 || st.Requests != 2*n-1 {
		t.Fatalf("stats %+v: want %d statements, %d commits and %d ends written", st, n, n, n-1)
	}
	other := openStore(t, pool, schema, "er2", nil)
	if e, found, err := other.LookupContext(ctxT(t), gs[n-1]); err != nil || !found || e.State != decisionlog.StateCommitted {
		t.Fatalf("held end read by another store: %+v, %v, %v; want committed, not yet ended", e, found, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Batches != n+1 || st.Ends != n || st.EndsDropped != 0 {
		t.Fatalf("stats after Close %+v: want the held end written in a last statement", st)
	}
	for i, g := range gs {
		if e, found, err := other.LookupContext(ctxT(t), g); err != nil || !found || e.State != decisionlog.StateDone {
			t.Fatalf("transaction %d read by another store after Close: %+v, %v, %v; want done", i, e, found, err)
		}
	}
}

// Ends arriving concurrently with decisions: whatever the interleaving, no
// statement holds only ends while decisions are still to come; the ends
// left at the end are written by Close, in one statement.
func TestConcurrentEndsShareDecisionBatches(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	var endsOnly, withEnds atomic.Int64
	s := openStore(t, pool, testSchema(t, pool), "ec", func(o *Options) {
		o.EndDelay = time.Hour
		o.hooks = &testHooks{beforeBatch: func(n, waiters int) {
			switch {
			case waiters == 0:
				endsOnly.Add(1)
			case waiters < n:
				withEnds.Add(1)
			}
		}}
	})
	const clients, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			for range each {
				g := liveGid("ec")
				if err := s.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
					errs <- err
					return
				}
				if err := s.End(g); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := endsOnly.Load(); n != 0 {
		t.Fatalf("%d statements of only ends while decisions kept coming", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Commits != clients*each || st.Ends != clients*each || st.EndsDropped != 0 {
		t.Fatalf("stats %+v: want every commit and end written", st)
	}
	if n := endsOnly.Load(); n > 1 {
		t.Fatalf("%d statements of only ends: Close should write the held ones in one", n)
	}
	if withEnds.Load() == 0 {
		t.Fatal("no statement carried ends with decisions")
	}
	t.Logf("%d decisions and %d ends in %d statements, %d of them with ends", st.Commits, st.Ends, st.Batches, withEnds.Load())
}

// A lone end, with no decision to ride, is written once EndDelay passes.
func TestLoneEndWrittenAfterEndDelay(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "el", func(o *Options) { o.EndDelay = 20 * time.Millisecond })
	g := liveGid("el")
	if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
		t.Fatal(err)
	}
	if err := s.End(g); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the lone end written", func() bool { return s.Stats().Ends == 1 })
	if st := s.Stats(); st.Batches != 2 {
		t.Fatalf("stats %+v: want the decision and the end in two statements", st)
	}
	other := openStore(t, pool, schema, "el2", nil)
	if e, found, err := other.LookupContext(ctxT(t), g); err != nil || !found || e.State != decisionlog.StateDone {
		t.Fatalf("read by another store: %+v, %v, %v; want done", e, found, err)
	}
}

// Release writes the claimed node's queued ends first: they are not held
// for a decision to ride with (EndDelay), which, the lease released, could
// never write them.
func TestReleaseFlushesHeldEnds(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	x := openStore(t, pool, schema, "rx", func(o *Options) { o.LeaseTTL = time.Minute })
	y := openStore(t, pool, schema, "ry", func(o *Options) { o.EndDelay = time.Hour })
	g := liveGid("rx")
	if err := x.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
		t.Fatal(err)
	}
	expireLease(t, x, "rx")
	if _, err := y.Claim(ctxT(t), "rx"); err != nil {
		t.Fatal(err)
	}
	xl, err := y.ForNode("rx")
	if err != nil {
		t.Fatal(err)
	}
	if err := xl.End(g); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := y.Release(ctx, "rx"); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("Release waited for its context to end: the end was held")
	}
	if st := y.Stats(); st.Ends != 1 || st.EndsDropped != 0 {
		t.Fatalf("stats %+v: want the end written before the release", st)
	}
	if e, found, err := x.LookupContext(ctxT(t), g); err != nil || !found || e.State != decisionlog.StateDone {
		t.Fatalf("read by the node's own store: %+v, %v, %v; want done", e, found, err)
	}
}

// This store's Lookup and Pending show an end at once, also when it is
// written while the read runs (the read's snapshot predates the write, and
// the end is no longer queued when the read's rows are checked). Without
// EndDelay, each end is written right after End returns, racing the reads.
func TestEndShownAtOnceWhileWritten(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	s := openStore(t, pool, testSchema(t, pool), "ew", func(o *Options) { o.EndDelay = -1 })
	for i := range 100 {
		g := liveGid("ew")
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
			t.Fatal(err)
		}
		if err := s.End(g); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if e, found := s.Lookup(g); !found || e.State != decisionlog.StateDone {
				t.Fatalf("round %d: Lookup after End: %+v, %v; want done", i, e, found)
			}
			continue
		}
		ds, err := s.PendingContext(ctxT(t), "ew")
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.GTRID.String() == g.String() {
				t.Fatalf("round %d: Pending after End lists %s", i, g)
			}
		}
	}
}
