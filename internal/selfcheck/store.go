package selfcheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/startup"
	"github.com/xabridge/xabridge/internal/storeopt"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/replica"
	"github.com/xabridge/xabridge/xa"
)

// DefaultStoreLeaseTTL is the children's lease TTL on a store: short, since
// recovery after each kill waits for it.
const DefaultStoreLeaseTTL = 2 * time.Second

// operatorNode is the node id under which the check takes a killed child's
// node over (the "recovery alone" rounds), as `xabridge recover --store`
// does under its own.
const operatorNode = "selfcheck-op"

// storeCheck is the check's side of a shared store: its pool, whether it
// created the schema (then it drops it at the end), and the store it takes
// killed nodes over with.
type storeCheck struct {
	o       *Options
	pool    *pgxpool.Pool
	created bool
	op      *pgstore.Store // opened at the first takeover
}

// openStoreCheck connects to the store and fills in the defaults.
func openStoreCheck(ctx context.Context, o *Options) (*storeCheck, error) {
	if o.Store.Schema == "" {
		o.Store.Schema = o.Prefix + "_store"
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultStoreLeaseTTL
	}
	pool, err := storeopt.Connect(ctx, o.Store, 4, 10*time.Second)
	if err != nil {
		return nil, err
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, o.Store.Schema).Scan(&n); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	return &storeCheck{o: o, pool: pool, created: n == 0}, nil
}

func (s *storeCheck) close() {
	if s.op != nil {
		_ = s.op.Close()
	}
	s.pool.Close()
}

// drop removes the store's schema if the check created it.
func (s *storeCheck) drop(ctx context.Context) error {
	if !s.created {
		return nil
	}
	if s.op != nil {
		_ = s.op.Close()
		s.op = nil
	}
	if _, err := s.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s.o.Store.Schema}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("store: dropping schema %s: %w", s.o.Store.Schema, err)
	}
	return nil
}

// recoverAfterKill settles the killed child's node on the store, as a
// replica would: once its lease has expired, either a coordinator restarts
// under the node id (a new epoch; its own recovery finishes what the dead
// incarnation left), or, with takeover, another node claims it and
// replica.TakeOver settles it. It returns the node's entries in the store
// afterwards.
func (s *storeCheck) recoverAfterKill(ctx context.Context, b *bank.Bank, takeover bool) ([]decisionlog.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	node := s.o.NodeID
	resources := []drivers.Resource{b.PG, b.My}
	if err := pgstore.CheckStore(ctx, s.pool, s.o.Store.Schema); errors.Is(err, pgstore.ErrNoStore) {
		return nil, nil // killed before it opened the store: it did nothing
	}
	var last error
	for {
		var err error
		if takeover {
			err = s.takeOver(ctx, node, resources)
		} else {
			err = s.restart(ctx, node, resources)
		}
		if err == nil {
			break
		}
		last = err
		if !errors.Is(err, pgstore.ErrNodeLeased) && !errors.Is(err, replica.ErrUnfinished) && !errors.Is(err, errNotYet) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s not settled in time: %w", node, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
	rd, err := pgstore.OpenReader(ctx, s.pool, pgstore.ReaderOptions{Schema: s.o.Store.Schema})
	if err != nil {
		return nil, err
	}
	return rd.Entries(ctx, node)
}

// errNotYet: the restarted coordinator has not settled the node yet.
var errNotYet = errors.New("not settled yet")

// takeOver claims node (refused while the killed child's lease lives) and
// settles it.
func (s *storeCheck) takeOver(ctx context.Context, node string, resources []drivers.Resource) error {
	if s.op == nil {
		op, err := pgstore.Open(ctx, s.pool, pgstore.Options{Node: operatorNode, Schema: s.o.Store.Schema, SweepEvery: -1})
		if err != nil {
			return fmt.Errorf("opening the store as %s: %w", operatorNode, err)
		}
		s.op = op
	}
	_, err := replica.TakeOver(ctx, s.op, node, recovery.Config{Resources: resources})
	if errors.Is(err, pgstore.ErrUnknownNode) {
		return nil // never held a lease: it wrote nothing
	}
	return err
}

// restart runs a coordinator under node again (refused while the killed
// child's lease lives) until its recovery has left nothing of the node
// prepared or pending, then closes it.
func (s *storeCheck) restart(ctx context.Context, node string, resources []drivers.Resource) error {
	rp, err := replica.Open(ctx, replica.Config{
		Coordinator: xa.Config{NodeID: node, Resources: resources},
		Pool:        s.pool,
		// Ended decisions are kept for the invariant check's comparison.
		Store:        pgstore.Options{Schema: s.o.Store.Schema, LeaseTTL: s.o.LeaseTTL, EndedRetention: time.Hour, SweepEvery: -1},
		RecoverEvery: 200 * time.Millisecond,
		NoTakeover:   true,
	})
	if err != nil {
		return err
	}
	defer rp.Close()
	for {
		left, err := s.left(ctx, node, resources)
		if err != nil {
			return err
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %d branch(es) or decision(s) of node %s left", errNotYet, left, node)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// left counts node's prepared branches and pending commit decisions.
func (s *storeCheck) left(ctx context.Context, node string, resources []drivers.Resource) (int, error) {
	n, err := startup.InDoubt(ctx, node, resources...)
	if err != nil {
		return 0, err
	}
	rd, err := pgstore.OpenReader(ctx, s.pool, pgstore.ReaderOptions{Schema: s.o.Store.Schema})
	if err != nil {
		return 0, err
	}
	pend, err := rd.PendingContext(ctx, node)
	if err != nil {
		return 0, err
	}
	return n + len(pend), nil
}
