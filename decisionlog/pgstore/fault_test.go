package pgstore

import (
	"errors"
	"net"
	"strconv"
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
