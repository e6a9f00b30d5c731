package decisionlog

import (
	"context"
	"testing"
	"time"
)

// End records need no fsync of their own: a batch of only End records is
// written without one, the next decision's fsync covers it, and Close
// fsyncs what is left.
func TestFileLogEndRidesNextFsync(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	if err := l.Commit(ctx, flDecision(flG(1), "pg", "mysql")); err != nil {
		t.Fatal(err)
	}
	base := l.Stats()
	if err := l.End(flG(1)); err != nil {
		t.Fatal(err)
	}
	// The writer picks the End up on its own; wait until it wrote it.
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().LazyWrites == base.LazyWrites {
		if time.Now().After(deadline) {
			t.Fatal("the End record was never written")
		}
		time.Sleep(time.Millisecond)
	}
	if s := l.Stats(); s.Syncs != base.Syncs {
		t.Fatalf("an End-only batch cost %d fsyncs, want none", s.Syncs-base.Syncs)
	}
	if err := l.Commit(ctx, flDecision(flG(2), "pg", "mysql")); err != nil {
		t.Fatal(err)
	}
	if err := l.End(flG(2)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	// One fsync for decision 2 (covering End 1), and at most one at Close
	// for End 2 if it was not already in decision 2's batch.
	if got := s.Syncs - base.Syncs; got < 1 || got > 2 {
		t.Fatalf("%d fsyncs for one decision and two Ends, want 1 or 2", got)
	}
	l2 := openFL(t, dir, clock, nil)
	for _, g := range []uint32{1, 2} {
		if e, _ := l2.Lookup(flG(g)); e.State != StateDone {
			t.Fatalf("after reopen %d is %v, want done (the End records are durable)", g, e.State)
		}
	}
}

// CommitDelay holds a batch open so that later decisions share its fsync;
// a full batch ends the wait at once, so this test never waits the delay.
func TestFileLogCommitDelayFillsBatch(t *testing.T) {
	const n = 8
	fa := &flFaults{}
	l, err := OpenFileLog(t.TempDir(), FileLogOptions{Now: newFLClock(flT0).Now, MaxBatch: n, CommitDelay: time.Hour, hooks: fa.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Concurrency first: two decisions queued behind a held fsync make a
	// batch of two, which arms the delay.
	reached, release := fa.holdNextSync()
	first := flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(100), "pg")) })
	<-reached
	pair := []<-chan error{
		flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(101), "pg")) }),
		flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(102), "pg")) }),
	}
	flWaitQueued(t, l, 2)
	release()
	for _, ch := range append(pair, first) {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	base := l.Stats()
	var results []<-chan error
	for i := range n {
		results = append(results, flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(uint32(i)), "pg")) }))
	}
	for _, ch := range results {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if s := l.Stats(); s.Batches-base.Batches != 1 || s.Appends-base.Appends != n || s.Syncs-base.Syncs != 1 {
		t.Fatalf("stats = %+v, want the %d decisions in one batch with one fsync", s, n)
	}
}

// A lone client never waits the commit delay.
func TestFileLogCommitDelaySerialNeverWaits(t *testing.T) {
	l, err := OpenFileLog(t.TempDir(), FileLogOptions{Now: newFLClock(flT0).Now, CommitDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := flAsync(func() error {
		for i := range 20 {
			if err := l.Commit(context.Background(), flDecision(flG(uint32(i)), "pg")); err != nil {
				return err
			}
		}
		return nil
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serial decisions are waiting for the commit delay")
	}
}

// Close ends a commit delay: a decision waiting in it is written at once.
func TestFileLogCloseEndsCommitDelay(t *testing.T) {
	l, err := OpenFileLog(t.TempDir(), FileLogOptions{Now: newFLClock(flT0).Now, CommitDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l.lastWaiters = 2 // as after a batch of concurrent decisions (set before the writer sees a record)
	res := flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(1), "pg")) })
	// Wait until the writer holds the record in its delay.
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.qmu.Lock()
		waiting := l.delayNeed > 0
		l.qmu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer never started its commit delay")
		}
		time.Sleep(time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("the delayed decision failed at Close: %v", err)
	}
	if e, _ := l.Lookup(flG(1)); e.State != StateCommitted {
		t.Fatalf("state %v, want committed", e.State)
	}
}
