package pgstore

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// expireLease makes node's lease expired by the database's clock, as if
// its holder had stopped renewing long ago.
func expireLease(t *testing.T, s *Store, node string) {
	t.Helper()
	if n := exec(t, s.pool, s.names.schema, `UPDATE {nodes} SET expires_at = clock_timestamp() - interval '1 second' WHERE node = $1`, node); n != 1 {
		t.Fatalf("expire lease of %s: %d rows", node, n)
	}
}

func assertNoRow(t *testing.T, s *Store, g drivers.GlobalID) {
	t.Helper()
	if e, found, err := s.LookupContext(ctxT(t), g); err != nil || found {
		t.Fatalf("%s: found %+v (%v), want nothing written", g, e, err)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestSecondOpenRefused: a second live process with the same node id is
// refused at start, with who holds it; after Close it opens at once under
// the next epoch.
func TestSecondOpenRefused(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	a := openStore(t, pool, schema, "payments-1", nil)
	if a.Epoch() != 1 {
		t.Fatalf("first epoch %d", a.Epoch())
	}
	_, err := Open(ctxT(t), pool, Options{Node: "payments-1", Schema: schema})
	var le *LeasedError
	if !errors.Is(err, ErrNodeLeased) || !errors.As(err, &le) {
		t.Fatalf("second Open: %v", err)
	}
	if le.Epoch != 1 || le.Holder.PID != os.Getpid() || le.Holder.Incarnation != a.Holder().Incarnation || le.ExpiresIn <= 0 {
		t.Fatalf("LeasedError %+v", le)
	}
	t.Log(err)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := openStore(t, pool, schema, "payments-1", nil)
	if b.Epoch() != 2 {
		t.Fatalf("epoch after a clean restart %d, want 2", b.Epoch())
	}
	if err := a.Commit(ctxT(t), decisionlog.Decision{GTRID: liveGid("payments-1")}); !errors.Is(err, decisionlog.ErrLogClosed) {
		t.Fatalf("commit on a closed store: %v", err)
	}
}

// TestClaimRace: of 10 claimants racing for one expired lease, exactly one
// wins, at epoch + 1.
func TestClaimRace(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	dead := openStore(t, pool, schema, "dead", nil)
	expireLease(t, dead, "dead")
	claimants := make([]*Store, 10)
	for i := range claimants {
		claimants[i] = openStore(t, pool, schema, "c"+string(rune('0'+i)), nil)
	}
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		epochs = make([]int64, len(claimants))
		errs   = make([]error, len(claimants))
	)
	for i, c := range claimants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			epochs[i], errs[i] = c.Claim(ctxT(t), "dead")
		}()
	}
	close(start)
	wg.Wait()
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
			if epochs[i] != 2 {
				t.Errorf("winner %d got epoch %d, want 2", i, epochs[i])
			}
		case !errors.Is(err, ErrNodeLeased):
			t.Errorf("claimant %d: %v", i, err)
		}
	}
	if winners != 1 {
		t.Fatalf("%d winners, want exactly 1 (%v)", winners, errs)
	}
	nodes, err := claimants[0].Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Node == "dead" && (n.State != NodeTakenOver || n.Epoch != 2) {
			t.Fatalf("dead node after the claim: %+v", n)
		}
	}
	if _, err := claimants[0].Claim(ctxT(t), "never-seen"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("claim of an unknown node: %v", err)
	}
}

// TestLostLeaseRefusesWrites: once another epoch holds the lease, or it
// expired by the database's clock, the write is refused in the same
// statement: nothing written, ErrLeaseLost (and ErrFenced for a commit).
func TestLostLeaseRefusesWrites(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, sql string
	}{
		{"epoch bumped", `UPDATE {nodes} SET epoch = epoch + 1 WHERE node = $1`},
		{"expired", `UPDATE {nodes} SET expires_at = clock_timestamp() - interval '1 second' WHERE node = $1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := testPool(t, nil)
			schema := testSchema(t, pool)
			s := openStore(t, pool, schema, "x", func(o *Options) { o.LeaseTTL = time.Minute })
			ctx := ctxT(t)
			committed := liveGid("x")
			if err := s.Commit(ctx, decisionlog.Decision{GTRID: committed, Participants: parts()}); err != nil {
				t.Fatal(err)
			}
			exec(t, pool, schema, tc.sql, "x")
			before := s.Stats().Batches

			g := liveGid("x")
			err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()})
			if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, decisionlog.ErrFenced) || errors.Is(err, decisionlog.ErrLogFailed) {
				t.Fatalf("commit after losing the lease: %v", err)
			}
			if s.Stats().Batches != before+1 || s.Stats().LeaseRefused != 1 {
				t.Fatalf("the database was to refuse it: stats %+v", s.Stats())
			}
			assertNoRow(t, s, g)
			if !closed(s.Lost()) || !errors.Is(s.LeaseErr(), ErrLeaseLost) {
				t.Fatal("Lost not signalled")
			}
			// Later writes are refused without a round trip.
			if err := s.Abort(ctx, decisionlog.Action{GTRID: g}); !errors.Is(err, ErrLeaseLost) || errors.Is(err, decisionlog.ErrFenced) {
				t.Fatalf("abort after losing the lease: %v", err)
			}
			if err := s.Record(ctx, decisionlog.Action{GTRID: committed, Op: "x"}); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("record after losing the lease: %v", err)
			}
			if s.Stats().Batches != before+1 {
				t.Fatalf("writes after the loss were sent: %+v", s.Stats())
			}
			// A repeat of a durable decision is still success, never
			// ErrFenced (that would tell the coordinator to roll back a
			// committed transaction); a new one is fenced.
			if err := s.Commit(ctx, decisionlog.Decision{GTRID: committed, Participants: parts()}); err != nil {
				t.Fatalf("repeat of a durable decision after losing the lease: %v", err)
			}
			s.cmu.Lock()
			delete(s.known, committed.String()) // as after a restart: the store must read it
			s.cmu.Unlock()
			if err := s.Commit(ctx, decisionlog.Decision{GTRID: committed, Participants: parts()}); err != nil {
				t.Fatalf("repeat of a durable decision after losing the lease, not cached: %v", err)
			}
			if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); !errors.Is(err, decisionlog.ErrFenced) {
				t.Fatalf("second commit after losing the lease: %v", err)
			}
			if s.Stats().Batches != before+1 {
				t.Fatalf("writes after the loss were sent: %+v", s.Stats())
			}
			assertNoRow(t, s, g)

			// Reacquire waits for the expiry, then takes a new epoch.
			if tc.name == "epoch bumped" {
				if _, err := s.Reacquire(ctx); !errors.Is(err, ErrNodeLeased) {
					t.Fatalf("reacquire of a live lease: %v", err)
				}
				expireLease(t, s, "x")
			}
			old := s.Epoch()
			epoch, err := s.Reacquire(ctx)
			if err != nil || epoch <= old {
				t.Fatalf("reacquire: %d, %v (old epoch %d)", epoch, err, old)
			}
			if closed(s.Lost()) {
				t.Fatal("new lease reported lost")
			}
			if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
				t.Fatalf("commit under the new epoch: %v", err)
			}
		})
	}
}

// TestTakeoverFencesLateCommit: a claimant's abort, written under the dead
// node's new epoch, refuses the old holder's late commit twice over: by
// epoch, and by the abort row once the old holder holds a lease again.
func TestTakeoverFencesLateCommit(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	x := openStore(t, pool, schema, "x", func(o *Options) { o.LeaseTTL = time.Minute })
	y := openStore(t, pool, schema, "y", nil)
	ctx := ctxT(t)

	pending := liveGid("x")
	if err := x.Commit(ctx, decisionlog.Decision{GTRID: pending, Participants: parts()}); err != nil {
		t.Fatal(err)
	}
	// x is partitioned: its lease runs out by the database's clock.
	expireLease(t, x, "x")
	if _, err := y.ForNode("x"); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("ForNode before the claim: %v", err)
	}
	epoch, err := y.Claim(ctx, "x")
	if err != nil || epoch != 2 {
		t.Fatalf("claim: %d, %v", epoch, err)
	}
	xl, err := y.ForNode("x")
	if err != nil {
		t.Fatal(err)
	}
	// The claimant sees x's pending decision, drives it, ends it.
	pend := xl.Pending()
	if len(pend) != 1 || pend[0].GTRID.String() != pending.String() {
		t.Fatalf("claimant sees pending %v", pend)
	}
	if err := xl.Abort(ctx, decisionlog.Action{GTRID: pending}); !errors.Is(err, decisionlog.ErrAlreadyCommitted) {
		t.Fatalf("claimant's abort of a committed transaction: %v", err)
	}
	if err := xl.End(pending); err != nil {
		t.Fatal(err)
	}
	if err := xl.Commit(ctx, decisionlog.Decision{GTRID: liveGid("x")}); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("claimant commit: %v", err)
	}
	// And aborts an undecided one before rolling its branches back.
	undecided, other := liveGid("x"), liveGid("x")
	if err := xl.Abort(ctx, decisionlog.Action{GTRID: undecided, Actor: "takeover@y"}); err != nil {
		t.Fatal(err)
	}
	if err := xl.Abort(ctx, decisionlog.Action{GTRID: liveGid("y")}); err == nil {
		t.Fatal("NodeLog of x aborted a transaction of y")
	}

	// x's late commits: refused by epoch, nothing written.
	for _, g := range []drivers.GlobalID{undecided, other} {
		err := x.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()})
		if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, decisionlog.ErrFenced) {
			t.Fatalf("late commit of %s: %v", g, err)
		}
	}
	assertNoRow(t, x, other)
	if e, _ := x.Lookup(undecided); e.State != decisionlog.StateAborted {
		t.Fatalf("undecided: %+v", e)
	}
	waitFor(t, 10*time.Second, "claimant's end written", func() bool { return y.Stats().Ends == 1 })
	if e, _ := x.Lookup(pending); e.State != decisionlog.StateDone {
		t.Fatalf("pending after takeover: %+v", e)
	}

	// The claimant gives the lease back; x comes back under a new epoch and
	// sees what was done: the abort row still refuses the commit.
	if err := y.Release(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	epoch, err = x.Reacquire(ctx)
	if err != nil || epoch != 3 {
		t.Fatalf("x reacquire: %d, %v", epoch, err)
	}
	err = x.Commit(ctx, decisionlog.Decision{GTRID: undecided, Participants: parts()})
	if !errors.Is(err, decisionlog.ErrFenced) || errors.Is(err, ErrLeaseLost) {
		t.Fatalf("commit after the claimant's abort, under a valid lease: %v", err)
	}
	if err := x.Commit(ctx, decisionlog.Decision{GTRID: other, Participants: parts()}); err != nil {
		t.Fatalf("commit of an untouched transaction under the new epoch: %v", err)
	}
	if len(x.Pending()) != 1 {
		t.Fatalf("x pending %v", x.Pending())
	}
}

// TestLocalExpiryStopsWrites: a store that cannot renew stops writing at
// its own conservative estimate, before the database's expiry, without
// sending anything.
func TestLocalExpiryStopsWrites(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	var fail sync.Once
	block := make(chan struct{})
	s := openStore(t, pool, schema, "paused", func(o *Options) {
		o.LeaseTTL = time.Second
		o.RenewEvery = 200 * time.Millisecond
		o.Margin = 300 * time.Millisecond
		o.hooks = &testHooks{renew: func() error {
			fail.Do(func() { close(block) })
			return errors.New("injected: store unreachable")
		}}
	})
	<-block
	select {
	case <-s.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("lease not reported lost")
	}
	before := s.Stats().Batches
	g := liveGid("paused")
	err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: g, Participants: parts()})
	if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, decisionlog.ErrFenced) {
		t.Fatalf("commit after local expiry: %v", err)
	}
	if st := s.Stats(); st.Batches != before || st.LocalLeaseRefused == 0 || st.RenewFailures == 0 {
		t.Fatalf("stats %+v", st)
	}
	assertNoRow(t, s, g)
	// By the database's clock the lease is still live (the local estimate
	// is conservative): reacquiring must wait.
	info, err := s.NodeInfo(ctxT(t), "paused")
	if err != nil {
		t.Fatal(err)
	}
	if info.State == NodeLive {
		if _, err := s.Reacquire(ctxT(t)); !errors.Is(err, ErrNodeLeased) {
			t.Fatalf("reacquire before the database's expiry: %v", err)
		}
	}
	waitFor(t, 10*time.Second, "database expiry", func() bool {
		info, err := s.NodeInfo(ctxT(t), "paused")
		return err == nil && info.State == NodeExpired
	})
	if _, err := s.Reacquire(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestRenewalKeepsLease: the renewer keeps a short lease alive well past
// its TTL.
func TestRenewalKeepsLease(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	s := openStore(t, pool, schema, "r", func(o *Options) { o.LeaseTTL = 1500 * time.Millisecond })
	waitFor(t, 10*time.Second, "renewals", func() bool { return s.Stats().Renewals >= 6 || closed(s.Lost()) })
	if closed(s.Lost()) {
		t.Fatal(s.LeaseErr())
	}
	if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: liveGid("r")}); err != nil {
		t.Fatal(err)
	}
}

// TestCloseStopsGoroutines: Close stops the writer, the renewer and the
// sweeper.
func TestCloseStopsGoroutines(t *testing.T) {
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	// Warm the pool's own goroutines up first.
	openStore(t, pool, schema, "warm", nil).Close()
	base := runtime.NumGoroutine()
	for i := range 3 {
		s := openStore(t, pool, schema, "gl", func(o *Options) { o.SweepEvery = time.Millisecond })
		if err := s.Commit(ctxT(t), decisionlog.Decision{GTRID: liveGid("gl")}); err != nil {
			t.Fatal(i, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "goroutines to end", func() bool { return runtime.NumGoroutine() <= base })
}

// TestClaimIsRenewed: a claimed lease is renewed with the store's own
// until Release, which leaves it expired for the node to come back.
func TestClaimIsRenewed(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	dead := openStore(t, pool, schema, "gone", nil)
	if err := dead.Close(); err != nil {
		t.Fatal(err)
	}
	c := openStore(t, pool, schema, "claimant", func(o *Options) { o.LeaseTTL = 600 * time.Millisecond })
	ctx := ctxT(t)
	if err := c.Holds("gone"); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("Holds before the claim = %v, want ErrNotHolder", err)
	}
	if _, err := c.Claim(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := c.Holds("gone"); err != nil {
		t.Fatalf("Holds of the claimed node: %v", err)
	}
	if err := c.Holds("claimant"); err != nil {
		t.Fatalf("Holds of the store's own node: %v", err)
	}
	start := c.Stats().Renewals
	// Both leases renewed several times: the claim outlives its TTL.
	waitFor(t, 10*time.Second, "renewals", func() bool { return c.Stats().Renewals >= start+8 })
	info, err := c.NodeInfo(ctx, "gone")
	if err != nil || info.State != NodeTakenOver || info.Holder.Node != "claimant" || info.Epoch != 2 {
		t.Fatalf("claimed node %+v, %v", info, err)
	}
	if err := c.Holds("gone"); err != nil {
		t.Fatalf("Holds after renewals past the TTL: %v", err)
	}
	if err := c.Release(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := c.Holds("gone"); err == nil {
		t.Fatal("Holds of a released claim = nil")
	}
	if info, _ := c.NodeInfo(ctx, "gone"); info.State != NodeExpired {
		t.Fatalf("released node %+v", info)
	}
	back := openStore(t, pool, schema, "gone", nil)
	if back.Epoch() != 3 {
		t.Fatalf("epoch of the node back %d, want 3", back.Epoch())
	}
}
