package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/netfault"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/xa"
)

const (
	accounts = 20
	balance  = 1000
)

func suffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// world is one test's databases: bank tables of its own on both servers
// and a store schema of its own.
type world struct {
	t      *testing.T
	prefix string
	bank   *bank.Bank    // direct connections, for survivors and checks
	pool   *pgxpool.Pool // the store's database, direct
	schema string
	keeper bool // decisions kept in PostgreSQL (DecisionResource "pg")
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := ctxT(t)
	w := &world{t: t, prefix: "xab_rp_" + suffix()}
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix(w.prefix); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, accounts, balance); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Drop(context.Background()); err != nil {
			t.Errorf("dropping test tables: %v", err)
		}
		b.Close()
	})
	w.bank = b
	w.pool = storePool(t, dbtest.PG(t))
	w.schema = "xbr_" + suffix()
	t.Cleanup(func() {
		if _, err := w.pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+w.schema+` CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", w.schema, err)
		}
	})
	return w
}

func storePool(t testing.TB, rawURL string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 6
	ctx := ctxT(t)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// proxied returns rawURL pointing at a fault proxy to its server.
func proxied(t testing.TB, rawURL string) (string, *netfault.Proxy) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := netfault.Listen(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr()
	return u.String(), p
}

// nodeOpts says how a test node is opened.
type nodeOpts struct {
	ttl time.Duration
	// viaProxy routes the node's databases and store through fault
	// proxies, so that the test can kill it (every connection cut) or
	// partition it.
	viaProxy   bool
	storeProxy bool // only the store through a proxy
	hook       func(xa.Step, xa.StepInfo)
	every      time.Duration
	noTakeover bool
	timeout    time.Duration // xa.Config.Timeout (default 20s)
}

// node is one replica of a test, with its own connections.
type node struct {
	id      string
	r       *Replica
	b       *bank.Bank
	proxies []*netfault.Proxy // pg, mysql, store (viaProxy); store (storeProxy)
	closed  bool
}

func (w *world) open(id string, o nodeOpts) *node {
	t := w.t
	t.Helper()
	ctx := ctxT(t)
	n := &node{id: id}
	pgURL, myURL, stURL := dbtest.PG(t), dbtest.MySQL(t), dbtest.PG(t)
	if o.viaProxy {
		var p1, p2 *netfault.Proxy
		pgURL, p1 = proxied(t, pgURL)
		myURL, p2 = proxied(t, myURL)
		n.proxies = append(n.proxies, p1, p2)
	}
	if o.viaProxy || o.storeProxy {
		var p *netfault.Proxy
		stURL, p = proxied(t, stURL)
		n.proxies = append(n.proxies, p)
	}
	b, err := bank.Open(ctx, pgURL, myURL, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.SetPrefix(w.prefix); err != nil {
		t.Fatal(err)
	}
	n.b = b
	if o.ttl == 0 {
		o.ttl = 2 * time.Second
	}
	if o.timeout == 0 {
		o.timeout = 20 * time.Second
	}
	cc := xa.Config{NodeID: id, Resources: []drivers.Resource{b.PG, b.My}, Hook: o.hook, Timeout: o.timeout}
	if w.keeper {
		cc.DecisionResource = b.PG.Name()
	}
	cfg := Config{
		Coordinator:  cc,
		Pool:         storePool(t, stURL),
		Store:        pgstore.Options{Schema: w.schema, LeaseTTL: o.ttl, WriteTimeout: time.Second, ReadTimeout: time.Second},
		RecoverEvery: o.every,
		NoTakeover:   o.noTakeover,
	}
	r, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	n.r = r
	t.Cleanup(func() { n.close() })
	return n
}

func (n *node) close() {
	if n.closed {
		return
	}
	n.closed = true
	_ = n.r.Close()
}

// kill cuts every connection of a node opened viaProxy and refuses new
// ones: to the databases and to the store it is dead (its sessions end,
// its lease is no longer renewed, nothing it sends arrives).
func (n *node) kill() {
	for _, p := range n.proxies {
		_ = p.Close()
	}
}

// prepared counts prepared branches of node on both databases.
func (w *world) prepared(node string) (int, error) {
	return startup.InDoubt(context.Background(), node, w.bank.PG, w.bank.My)
}

// assertInvariants checks money is conserved, every transfer is in both
// databases or neither, and no branch of nodes is prepared.
func (w *world) assertInvariants(nodes ...string) bank.State {
	t := w.t
	t.Helper()
	st, err := w.bank.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(2 * accounts * balance); st.Total() != want {
		t.Errorf("total money %d, want %d", st.Total(), want)
	}
	if st.Violations() != 0 {
		t.Errorf("atomicity violated: only in postgres %v, only in mysql %v, amount mismatch %v", st.OnlyPG, st.OnlyMy, st.AmountMismatch)
	}
	for _, node := range nodes {
		if n, err := w.prepared(node); err != nil || n != 0 {
			t.Errorf("%d branches of node %s left prepared (%v)", n, node, err)
		}
	}
	return st
}

// transferIn reports whether transfer id is in each database.
func (w *world) transferIn(id string) (pg, my bool) {
	t := w.t
	t.Helper()
	ctx := context.Background()
	var n int
	if err := w.bank.PGPool.QueryRow(ctx, "SELECT count(*) FROM "+w.bank.Table("transfers")+" WHERE id = $1", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	pg = n == 1
	if err := w.bank.MyDB.QueryRowContext(ctx, "SELECT count(*) FROM "+w.bank.Table("transfers")+" WHERE id = ?", id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return pg, n == 1
}

// stopKey is the context key of a transfer's stop step.
type stopKey struct{}

// stopper is a coordinator hook that stops a transaction at the step its
// Begin context names (withStop), until released: the transaction's
// coordinator "hangs" there, as a process killed at that step would.
type stopper struct {
	mu      sync.Mutex
	at      map[drivers.GlobalID]stopAt
	reached chan drivers.GlobalID
	release chan struct{}
}

type stopAt struct {
	step     xa.Step
	resource string // for per-branch steps: only this branch stops
}

func newStopper() *stopper {
	return &stopper{at: map[drivers.GlobalID]stopAt{}, reached: make(chan drivers.GlobalID, 100), release: make(chan struct{})}
}

func withStop(ctx context.Context, step xa.Step, resource string) context.Context {
	return context.WithValue(ctx, stopKey{}, stopAt{step: step, resource: resource})
}

// stepOf returns where g was told to stop.
func (s *stopper) stepOf(g drivers.GlobalID) stopAt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at[g]
}

func (s *stopper) hook(step xa.Step, info xa.StepInfo) {
	if step == xa.StepBegin {
		if at, ok := info.Context.Value(stopKey{}).(stopAt); ok {
			s.mu.Lock()
			s.at[info.GTRID] = at
			s.mu.Unlock()
		}
		return
	}
	s.mu.Lock()
	at, ok := s.at[info.GTRID]
	s.mu.Unlock()
	if !ok || at.step != step || (at.resource != "" && at.resource != info.Resource) {
		return
	}
	s.reached <- info.GTRID
	<-s.release
}

// result is what one transfer's caller was told.
type result struct {
	id  string
	err error
}

// runStopped starts one transfer per stop in the background on n and waits
// until each has reached its stop.
func runStopped(t *testing.T, n *node, s *stopper, stops []stopAt, first int) (<-chan result, []drivers.GlobalID) {
	t.Helper()
	out := make(chan result, len(stops))
	for i, st := range stops {
		go func() {
			ctx := withStop(context.Background(), st.step, st.resource)
			id, err := n.b.Do(ctx, n.r.Coordinator(), bank.Transfer{PGAccount: int64(first + i), MyAccount: int64(first + i), Amount: 10})
			out <- result{id, err}
		}()
	}
	var gs []drivers.GlobalID
	timeout := time.After(30 * time.Second)
	for range stops {
		select {
		case g := <-s.reached:
			gs = append(gs, g)
		case r := <-out:
			t.Fatalf("transfer %s ended before its stop: %v", r.id, r.err)
		case <-timeout:
			t.Fatal("transfers did not reach their stops")
		}
	}
	return out, gs
}

func isLeased(err error) bool { return errors.Is(err, pgstore.ErrNodeLeased) }
