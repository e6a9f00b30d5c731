package pgstore

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

func parts() []decisionlog.Participant {
	return []decisionlog.Participant{{Resource: "pg", Branch: 1}, {Resource: "my", Branch: 2}}
}

// TestLogSemantics is the Log contract's table on one store: the answers
// FileLog and MemLog give, with the database as the truth.
func TestLogSemantics(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "n1", nil)
	ctx := ctxT(t)

	commit := func(g drivers.GlobalID) error {
		return s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()})
	}
	abort := func(g drivers.GlobalID) error {
		return s.Abort(ctx, decisionlog.Action{GTRID: g, Reason: "test", Actor: "recovery@n1"})
	}
	state := func(g drivers.GlobalID) decisionlog.State {
		t.Helper()
		e, found, err := s.LookupContext(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			return decisionlog.StateNone
		}
		return e.State
	}

	t.Run("commit", func(t *testing.T) {
		g := liveGid("n1")
		if err := commit(g); err != nil {
			t.Fatal(err)
		}
		e, found := s.Lookup(g)
		if !found || e.State != decisionlog.StateCommitted || e.Decision == nil || len(e.Decision.Participants) != 2 {
			t.Fatalf("Lookup = %+v, %v", e, found)
		}
		if e.Decision.Participants[1] != parts()[1] || e.Decision.At.IsZero() {
			t.Fatalf("decision = %+v", e.Decision)
		}
	})
	t.Run("duplicate commit is success", func(t *testing.T) {
		g := liveGid("n1")
		if err := commit(g); err != nil {
			t.Fatal(err)
		}
		if err := commit(g); err != nil {
			t.Fatalf("repeat: %v", err)
		}
		if st := state(g); st != decisionlog.StateCommitted {
			t.Fatalf("state %s", st)
		}
	})
	t.Run("abort after commit", func(t *testing.T) {
		g := liveGid("n1")
		if err := commit(g); err != nil {
			t.Fatal(err)
		}
		err := abort(g)
		if !errors.Is(err, decisionlog.ErrAlreadyCommitted) || errors.Is(err, decisionlog.ErrLogFailed) {
			t.Fatalf("abort after commit: %v", err)
		}
		if st := state(g); st != decisionlog.StateCommitted {
			t.Fatalf("state %s", st)
		}
	})
	t.Run("commit after abort is fenced", func(t *testing.T) {
		g := liveGid("n1")
		if err := abort(g); err != nil {
			t.Fatal(err)
		}
		err := commit(g)
		if !errors.Is(err, decisionlog.ErrFenced) || errors.Is(err, ErrLeaseLost) {
			t.Fatalf("commit after abort: %v", err)
		}
		e, _ := s.Lookup(g)
		if e.State != decisionlog.StateAborted || e.Decision != nil || len(e.Actions) != 1 || e.Actions[0].Op != "abort" ||
			e.Actions[0].Actor != "recovery@n1" {
			t.Fatalf("entry %+v", e)
		}
		if err := abort(g); err != nil {
			t.Fatalf("repeated abort: %v", err)
		}
		if e, _ := s.Lookup(g); len(e.Actions) != 2 {
			t.Fatalf("repeated abort recorded %d actions, want 2", len(e.Actions))
		}
	})
	t.Run("record", func(t *testing.T) {
		g := liveGid("n1")
		if err := commit(g); err != nil {
			t.Fatal(err)
		}
		at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
		for i, a := range []decisionlog.Action{
			{GTRID: g, Resource: "pg", Branch: 1, Op: "commit", Reason: "phase 2", Actor: "recovery@n1", At: at},
			{GTRID: g, Resource: "my", Branch: 2, Op: "rollback", Reason: "forced", Actor: "operator root@h", Heuristic: true},
		} {
			if err := s.Record(ctx, a); err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
		}
		e, _ := s.Lookup(g)
		if len(e.Actions) != 2 || !e.Actions[0].At.Equal(at) || e.Actions[1].Op != "rollback" || !e.Heuristic() ||
			e.Actions[1].Resource != "my" || e.Actions[1].Branch != 2 {
			t.Fatalf("entry %+v", e)
		}
		// An action on a transaction without decision is found too.
		g2 := liveGid("n1")
		if err := s.Record(ctx, decisionlog.Action{GTRID: g2, Op: "rollback", Reason: "presumed abort"}); err != nil {
			t.Fatal(err)
		}
		if e, found := s.Lookup(g2); !found || e.State != decisionlog.StateNone || len(e.Actions) != 1 {
			t.Fatalf("entry %+v %v", e, found)
		}
	})
	t.Run("end", func(t *testing.T) {
		g := liveGid("n1")
		if err := commit(g); err != nil {
			t.Fatal(err)
		}
		if err := s.End(g); err != nil {
			t.Fatal(err)
		}
		if st := state(g); st != decisionlog.StateDone {
			t.Fatalf("after End: %s", st)
		}
		for _, d := range s.Pending() {
			if d.GTRID.String() == g.String() {
				t.Fatal("ended decision still pending")
			}
		}
		if err := s.End(g); err != nil {
			t.Fatalf("second End: %v", err)
		}
		// Written with the next batch: then another process sees it.
		waitFor(t, 10*time.Second, "end written", func() bool { return s.Stats().Ends > 0 && !s.isEnding(g.String()) })
		var ended bool
		if err := pool.QueryRow(ctx, `SELECT ended_at IS NOT NULL FROM `+schema+`.xabridge_store_decisions WHERE gtrid = $1`,
			g.String()).Scan(&ended); err != nil || !ended {
			t.Fatalf("row ended = %v, %v", ended, err)
		}
		if err := s.End(liveGid("n1")); err == nil {
			t.Fatal("End of a transaction without decision succeeded")
		}
	})
	t.Run("pending in decision order", func(t *testing.T) {
		var want []drivers.GlobalID
		for range 5 {
			g := liveGid("n1")
			if err := commit(g); err != nil {
				t.Fatal(err)
			}
			want = append(want, g)
		}
		var got []drivers.GlobalID
		for _, d := range s.Pending() {
			for _, w := range want {
				if d.GTRID.String() == w.String() {
					got = append(got, d.GTRID)
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) { // String forms
			t.Fatalf("pending %v, want %v", got, want)
		}
	})
	t.Run("other node", func(t *testing.T) {
		g := liveGid("n2")
		if err := commit(g); !errors.Is(err, ErrNotHolder) {
			t.Fatalf("commit of another node's transaction: %v", err)
		}
		if err := abort(g); !errors.Is(err, ErrNotHolder) {
			t.Fatalf("abort of another node's transaction: %v", err)
		}
	})
	t.Run("mixed batch", func(t *testing.T) {
		// Many requests at once, including repeats of one gtrid, which the
		// writer must split across batches and answer in order.
		g := liveGid("n1")
		var wg sync.WaitGroup
		errs := make([]error, 20)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch i % 4 {
				case 0:
					errs[i] = commit(g)
				case 1:
					errs[i] = s.Record(ctx, decisionlog.Action{GTRID: g, Op: "note"})
				default:
					errs[i] = commit(liveGid("n1"))
				}
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("request %d: %v", i, err)
			}
		}
		if e, _ := s.Lookup(g); e.State != decisionlog.StateCommitted || len(e.Actions) != 5 {
			t.Fatalf("entry %+v", e)
		}
	})
	if st := s.Stats(); st.Failed || st.Batches == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDeadlineByDatabaseClock: the fence compares the deadline with the
// database's clock, never the coordinator's (which may be skewed).
func TestDeadlineByDatabaseClock(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)

	t.Run("past by the database, future by a slow local clock", func(t *testing.T) {
		s := openStore(t, pool, schema, "slow", func(o *Options) {
			o.Now = func() time.Time { return time.Now().Add(-time.Hour) }
		})
		g := gid("slow", dbNow(t, pool).Add(-time.Second))
		if !time.Now().Add(-time.Hour).Before(g.Deadline()) {
			t.Fatal("test setup: the skewed local clock must be before the deadline")
		}
		err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()})
		if !errors.Is(err, decisionlog.ErrFenced) || errors.Is(err, ErrLeaseLost) {
			t.Fatalf("commit past the deadline by the database's clock: %v", err)
		}
		if _, found, err := s.LookupContext(ctxT(t), g); found || err != nil {
			t.Fatalf("fenced commit left a row (found %v, %v)", found, err)
		}
		if s.Stats().Fenced != 1 {
			t.Fatalf("stats %+v", s.Stats())
		}
	})
	t.Run("future by the database, past by a fast local clock", func(t *testing.T) {
		s := openStore(t, pool, schema, "fast", func(o *Options) {
			o.Now = func() time.Time { return time.Now().Add(time.Hour) }
		})
		g := gid("fast", dbNow(t, pool).Add(time.Minute))
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
			t.Fatalf("commit before the deadline by the database's clock: %v", err)
		}
		// A repeat after the deadline is still success (AdmitCommit).
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("repeat of a durable decision after its deadline", func(t *testing.T) {
		s := openStore(t, pool, schema, "rep", nil)
		// A deadline shortly ahead by the database's clock: commit, let it
		// pass, repeat (AdmitCommit checks a repeat before the deadline).
		g2 := gid("rep", dbNow(t, pool).Add(300*time.Millisecond))
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g2, Participants: parts()}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "deadline to pass by the database's clock", func() bool {
			return dbNow(t, pool).After(g2.Deadline())
		})
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g2, Participants: parts()}); err != nil {
			t.Fatalf("repeat after the deadline: %v", err)
		}
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: gid("rep", g2.Deadline())}); !errors.Is(err, decisionlog.ErrFenced) {
			t.Fatalf("new decision after the deadline: %v", err)
		}
	})
}

// TestGroupCommit: concurrent decisions share a statement (one round trip,
// one commit).
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	const n = 32
	release := make(chan struct{})
	var releaseOnce, once sync.Once
	var first atomic.Int64
	s := openStore(t, pool, schema, "gc", func(o *Options) {
		o.hooks = &testHooks{beforeBatch: func(n, _ int) {
			// Hold the first batch until every other committer is queued,
			// so the test does not depend on timing.
			once.Do(func() { first.Store(int64(n)); <-release })
		}}
	})
	// Registered after openStore's Close: runs before it, even if the test
	// fails, so the writer is never left blocked.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Commit(ctxT(t), decisionlog.Decision{GTRID: liveGid("gc"), Participants: parts()})
		}()
	}
	waitFor(t, 10*time.Second, "committers queued", func() bool {
		s.qmu.Lock()
		defer s.qmu.Unlock()
		return first.Load() > 0 && first.Load()+int64(len(s.queue)) == n
	})
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	st := s.Stats()
	if st.Commits != n || st.Batches != 2 || st.Requests != n {
		t.Fatalf("stats %+v: want %d commits in 2 batches", st, n)
	}
	t.Logf("%d commits in %d statements", st.Commits, st.Batches)
	if got := len(s.Pending()); got != n {
		t.Fatalf("%d pending, want %d", got, n)
	}
}

// TestTwoStoresShareRows: another process (another store on the same
// tables) reads what one store wrote; the database is the truth.
func TestTwoStoresShareRows(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	a := openStore(t, pool, schema, "a", nil)
	b := openStore(t, pool, schema, "b", nil)
	ctx := ctxT(t)
	g := liveGid("a")
	if err := a.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
		t.Fatal(err)
	}
	if e, found := b.Lookup(g); !found || e.State != decisionlog.StateCommitted {
		t.Fatalf("b sees %+v %v", e, found)
	}
	pa, err := b.PendingContext(ctx, "a")
	if err != nil || len(pa) != 1 || pa[0].GTRID.String() != g.String() {
		t.Fatalf("b: pending of a = %v, %v", pa, err)
	}
	if pb := b.Pending(); len(pb) != 0 {
		t.Fatalf("b's own pending = %v", pb)
	}
}

// TestSweep deletes finished rows in batches and keeps the rest.
func TestSweep(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "sw", func(o *Options) {
		o.SweepEvery = -1
		o.EndedRetention = time.Nanosecond
		o.AbortRetention = time.Nanosecond
	})
	ctx := ctxT(t)
	ended, live, heur := liveGid("sw"), liveGid("sw"), liveGid("sw")
	for _, g := range []drivers.GlobalID{ended, live, heur} {
		if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Record(ctx, decisionlog.Action{GTRID: heur, Op: "rollback", Heuristic: true}); err != nil {
		t.Fatal(err)
	}
	expiring := gid("sw", dbNow(t, pool).Add(200*time.Millisecond))
	if err := s.Abort(ctx, decisionlog.Action{GTRID: expiring}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []drivers.GlobalID{ended, heur} {
		if err := s.End(g); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "ends written", func() bool { return s.Stats().Ends == 2 })
	waitFor(t, 10*time.Second, "abort deadline passed", func() bool { return dbNow(t, pool).After(expiring.Deadline()) })
	n, err := s.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("swept %d rows, want 2 (the ended decision and the old abort)", n)
	}
	for g, want := range map[drivers.GlobalID]bool{ended: false, expiring: false, live: true, heur: true} {
		if _, found := s.Lookup(g); found != want {
			t.Errorf("%s found = %v after sweep, want %v", g, found, want)
		}
	}
}

// TestSchemaVersion: a store refuses tables of a newer version.
func TestSchemaVersion(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "v", nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	exec(t, pool, schema, `UPDATE {meta} SET version = 99`)
	_, err := Open(ctxT(t), pool, Options{Node: "v", Schema: schema})
	if !errors.Is(err, ErrSchemaVersion) {
		t.Fatalf("Open on a newer schema: %v", err)
	}
	if _, err := Open(ctxT(t), pool, Options{Node: "v", Schema: "Bad;"}); err == nil {
		t.Fatal("Open accepted a bad schema name")
	}
	if _, err := Open(ctxT(t), pool, Options{Node: "Bad Node", Schema: schema}); err == nil {
		t.Fatal("Open accepted a bad node id")
	}
}

// TestRefusedBatch: a statement the database refuses has a known outcome
// (nothing written): ErrRefused, and the store stays usable. Text the
// database cannot store never gets that far.
func TestRefusedBatch(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "rf", nil)
	ctx := ctxT(t)
	g := liveGid("rf")
	if err := s.Record(ctx, decisionlog.Action{GTRID: g, Op: "note", Reason: "bad \x00 byte \xff here"}); err != nil {
		t.Fatalf("record with a NUL byte and invalid UTF-8: %v", err)
	}
	if e, _ := s.Lookup(g); len(e.Actions) != 1 || e.Actions[0].Reason != "bad \uFFFD byte \uFFFD here" {
		t.Fatalf("entry %+v", e)
	}
	exec(t, pool, schema, `ALTER TABLE {actions} ADD CONSTRAINT no_forbidden CHECK (op <> 'forbidden')`)
	err := s.Record(ctx, decisionlog.Action{GTRID: g, Op: "forbidden"})
	if !errors.Is(err, ErrRefused) || errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("refused record: %v", err)
	}
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
		t.Fatalf("commit after a refused batch: %v", err)
	}
	if e, _ := s.Lookup(g); len(e.Actions) != 1 || e.State != decisionlog.StateCommitted {
		t.Fatalf("entry %+v", e)
	}
	if st := s.Stats(); st.RefusedBatches != 1 || st.Failed {
		t.Fatalf("stats %+v", st)
	}
}

// TestConcurrentFirstOpen: processes opening a fresh store at once create
// the schema once, without colliding.
func TestConcurrentFirstOpen(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ctxT(t), pool, Options{Node: fmt.Sprintf("first-%d", i), Schema: schema})
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("open %d: %v", i, err)
		}
	}
}
