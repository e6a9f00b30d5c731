package pgstore

import (
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/internal/netfault"
)

// proxiedPool returns a pool whose connections go through a fault proxy.
func proxiedPool(t *testing.T) (*pgxpool.Pool, *netfault.Proxy) {
	t.Helper()
	var p *netfault.Proxy
	pool := testPool(t, func(cfg *pgxpool.Config) {
		up := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
		var err error
		p, err = netfault.Listen(up)
		if err != nil {
			t.Fatal(err)
		}
		host, port, _ := net.SplitHostPort(p.Addr())
		n, _ := strconv.Atoi(port)
		cfg.ConnConfig.Host, cfg.ConnConfig.Port = host, uint16(n)
		cfg.ConnConfig.Fallbacks = nil
	})
	t.Cleanup(func() { _ = p.Close() })
	return pool, p
}

// TestFailStopOnUnknownOutcome: the connection is cut after a batch
// statement reached the server and before its answer came back. The
// decision may or may not be committed: the commit returns ErrLogFailed,
// and the store refuses every later write until reopened (DESIGN rule 6).
func TestFailStopOnUnknownOutcome(t *testing.T) {
	t.Parallel()
	pool, proxy := proxiedPool(t)
	direct := testPool(t, nil)
	schema := testSchema(t, direct)
	s := openStore(t, pool, schema, "cut", func(o *Options) { o.LeaseTTL = time.Minute })
	ctx := ctxT(t)
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: liveGid("cut"), Participants: parts()}); err != nil {
		t.Fatal(err)
	}
	g := liveGid("cut")
	cut, err := proxy.CutOnce(g.String(), netfault.CutAfterSend, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()})
	if !errors.Is(err, decisionlog.ErrLogFailed) || errors.Is(err, decisionlog.ErrFenced) {
		t.Fatalf("commit whose answer was lost: %v", err)
	}
	select {
	case <-cut.Fired(): // closed just after the connection is cut
	case <-time.After(10 * time.Second):
		t.Fatal("the cut did not fire")
	}
	t.Log(err)
	batches := s.Stats().Batches
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: liveGid("cut")}); !errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("commit after the failure: %v", err)
	}
	if err := s.Abort(ctx, decisionlog.Action{GTRID: liveGid("cut")}); !errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("abort after the failure: %v", err)
	}
	if err := s.End(g); !errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("end after the failure: %v", err)
	}
	if st := s.Stats(); !st.Failed || st.Batches != batches {
		t.Fatalf("stats after the failure %+v", st)
	}
	// The truth is in the database; the server carried the statement out
	// (or rolled it back if it noticed the lost client first).
	r := openStore(t, direct, schema, "reader", nil)
	var e decisionlog.Entry
	var found bool
	waitFor(t, 10*time.Second, "the cut statement to settle", func() bool {
		var n int
		_ = direct.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%unnest($1::text[]%' AND state = 'active' AND pid <> pg_backend_pid()`).Scan(&n)
		return n == 0
	})
	e, found, err = r.LookupContext(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the cut the decision is found=%v state=%s", found, e.State)
	if err := s.Close(); !errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("Close of a failed store: %v", err)
	}
	// Reopened, the node works again under a new epoch (Close released it).
	s2 := openStore(t, pool, schema, "cut", nil)
	if s2.Epoch() != 2 {
		t.Fatalf("epoch after reopen %d", s2.Epoch())
	}
	if err := s2.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); found && err != nil {
		t.Fatalf("repeat of the decision after reopen: %v", err)
	}
}

// TestPartitionedStoreStopsDeciding: a store cut off from PostgreSQL (a
// black hole: nothing answers, nothing fails) stops deciding when its own
// estimate of the lease runs out; a peer claims the node and aborts its
// transaction; when the partition heals the old store writes nothing stale
// and comes back under a new epoch.
func TestPartitionedStoreStopsDeciding(t *testing.T) {
	t.Parallel()
	pool, proxy := proxiedPool(t)
	direct := testPool(t, nil)
	schema := testSchema(t, direct)
	s := openStore(t, pool, schema, "cutoff", func(o *Options) {
		o.LeaseTTL = time.Second
		o.ReadTimeout = 500 * time.Millisecond
	})
	peer := openStore(t, direct, schema, "peer", nil)
	ctx := ctxT(t)
	g := liveGid("cutoff")

	proxy.Blackhole()
	select {
	case <-s.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the partitioned store did not notice it lost its lease")
	}
	// Fenced without a round trip: the store could not even check the row,
	// so the answer is ErrLeaseLost alone (in doubt for the coordinator) or
	// ErrFenced; never success, never a write.
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("commit while partitioned: %v", err)
	}
	waitFor(t, 10*time.Second, "the lease to expire by the database's clock", func() bool {
		info, err := peer.NodeInfo(ctx, "cutoff")
		return err == nil && info.State == NodeExpired
	})
	if _, err := peer.Claim(ctx, "cutoff"); err != nil {
		t.Fatal(err)
	}
	nl, err := peer.ForNode("cutoff")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.Abort(ctx, decisionlog.Action{GTRID: g, Actor: "takeover@peer"}); err != nil {
		t.Fatal(err)
	}

	proxy.Heal()
	// Healed once the store reaches its database again (connections broken
	// by the partition are replaced; under load that can outlast a read's
	// ReadTimeout, which would make the commit below in doubt instead).
	waitFor(t, 10*time.Second, "the store to reach its database again", func() bool {
		_, _, err := s.LookupContext(ctx, g)
		return err == nil
	})
	err = s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()})
	if !errors.Is(err, decisionlog.ErrFenced) {
		t.Fatalf("commit after the partition healed: %v", err)
	}
	if e, _ := peer.Lookup(g); e.State != decisionlog.StateAborted {
		t.Fatalf("after heal: %+v", e)
	}
	if _, err := s.Reacquire(ctx); !errors.Is(err, ErrNodeLeased) {
		t.Fatalf("reacquire while the peer holds the claim: %v", err)
	}
	if err := peer.Release(ctx, "cutoff"); err != nil {
		t.Fatal(err)
	}
	epoch, err := s.Reacquire(ctx)
	if err != nil || epoch != 3 {
		t.Fatalf("reacquire after the release: %d, %v", epoch, err)
	}
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); !errors.Is(err, decisionlog.ErrFenced) || errors.Is(err, ErrLeaseLost) {
		t.Fatalf("commit of the aborted transaction under the new epoch: %v", err)
	}
}

// TestReacquireAfterFailure: a write of unknown outcome fail-stops the store
// and gives its lease up (Lost fires; it is no longer renewed). Reacquire
// is refused until the lease has expired by the database's clock, then
// takes a new epoch, which no late write of the failed batch can match,
// and the store writes again.
func TestReacquireAfterFailure(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	schema := testSchema(t, pool)
	var fail atomic.Pointer[error]
	s := openStore(t, pool, schema, "failed", func(o *Options) {
		o.LeaseTTL = time.Second
		o.hooks = &testHooks{failBatch: func() error {
			if p := fail.Swap(nil); p != nil {
				return *p
			}
			return nil
		}}
	})
	ctx := ctxT(t)
	epoch := s.Epoch()
	injected := errors.New("injected: connection lost after send")
	fail.Store(&injected)
	g := liveGid("failed")
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); !errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("commit of the failed batch: %v", err)
	}
	if !closed(s.Lost()) || !s.Stats().Failed {
		t.Fatalf("after the failure: lost %v, stats %+v", closed(s.Lost()), s.Stats())
	}
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: liveGid("failed")}); !errors.Is(err, decisionlog.ErrLogFailed) {
		t.Fatalf("commit after the failure: %v", err)
	}
	info, err := s.NodeInfo(ctx, "failed")
	if err != nil {
		t.Fatal(err)
	}
	if info.State == NodeLive {
		if _, err := s.Reacquire(ctx); !errors.Is(err, ErrNodeLeased) {
			t.Fatalf("reacquire before the database's expiry: %v", err)
		}
	}
	waitFor(t, 10*time.Second, "the given-up lease to expire", func() bool {
		info, err := s.NodeInfo(ctx, "failed")
		return err == nil && info.State == NodeExpired
	})
	got, err := s.Reacquire(ctx)
	if err != nil || got != epoch+1 {
		t.Fatalf("reacquire after the failure: epoch %d, %v (was %d)", got, err, epoch)
	}
	if s.Stats().Failed || s.LeaseErr() != nil {
		t.Fatalf("still failed after reacquire: %+v, %v", s.Stats(), s.LeaseErr())
	}
	if err := s.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
		t.Fatalf("commit under the new epoch: %v", err)
	}
	if e, _ := s.Lookup(g); e.State != decisionlog.StateCommitted {
		t.Fatalf("state %v", e.State)
	}
}
