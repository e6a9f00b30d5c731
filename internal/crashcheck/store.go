package crashcheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/replica"
	"github.com/xabridge/xabridge/xa"
)

// StoreConfig puts a child process on a shared decision store.
type StoreConfig struct {
	URL    string // PostgreSQL URL of the store's database; "" means a file log
	Schema string // pgstore.Options.Schema ("" : the search_path)
	// LeaseTTL is pgstore.Options.LeaseTTL (0: its default).
	LeaseTTL time.Duration
	// RecoverEvery is replica.Config.RecoverEvery (0: its default, TTL/2).
	RecoverEvery time.Duration
}

// ExitNodeLeased is the exit status of a child refused at start because a
// live process holds its node id's lease (pgstore.ErrNodeLeased).
const ExitNodeLeased = 3

// openReplica opens the store's pool and a replica on it; closeAll closes
// the replica (releasing the lease), then the pool.
func openReplica(ctx context.Context, cfg ChildConfig, xcfg xa.Config) (*replica.Replica, func() error, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.Store.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("crashcheck: store URL: %w", err)
	}
	pcfg.MaxConns = int32(max(cfg.Workers+2, 4))
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, nil, fmt.Errorf("crashcheck: store: %w", err)
	}
	r, err := replica.Open(ctx, replica.Config{
		Coordinator:  xcfg,
		Pool:         pool,
		Store:        pgstore.Options{Schema: cfg.Store.Schema, LeaseTTL: cfg.Store.LeaseTTL, EndedRetention: time.Hour},
		RecoverEvery: cfg.Store.RecoverEvery,
		Logger:       cfg.Logger,
	})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return r, func() error {
		err := r.Close()
		pool.Close()
		return err
	}, nil
}

// IsNodeLeased reports whether err says the node id is held by a live
// process (the child should exit with ExitNodeLeased).
func IsNodeLeased(err error) bool { return errors.Is(err, pgstore.ErrNodeLeased) }

// StoreEntries reads every decision row of the store in schema (commit
// decisions and abort rows of every node) as log entries, for
// Expect.Entries: a commit row must be in every database, an abort row in
// none.
func StoreEntries(ctx context.Context, pool *pgxpool.Pool, schema string) ([]decisionlog.Entry, error) {
	table, err := storeTable(schema, pgstore.TableDecisions)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, "SELECT gtrid, state, ended_at IS NOT NULL FROM "+table)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer rows.Close()
	var out []decisionlog.Entry
	for rows.Next() {
		var id, state string
		var ended bool
		if err := rows.Scan(&id, &state, &ended); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		g, err := drivers.ParseGlobalID(id)
		if err != nil {
			return nil, fmt.Errorf("store: decision row %q: %w", id, err)
		}
		e := decisionlog.Entry{GTRID: g, State: decisionlog.StateAborted}
		if state == "C" {
			e.State = decisionlog.StateCommitted
			if ended {
				e.State = decisionlog.StateDone
			}
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// StorePending counts the commit decisions of node in the store whose
// phase 2 has not ended.
func StorePending(ctx context.Context, pool *pgxpool.Pool, schema, node string) (int, error) {
	table, err := storeTable(schema, pgstore.TableDecisions)
	if err != nil {
		return 0, err
	}
	var n int
	err = pool.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE node = $1 AND state = 'C' AND ended_at IS NULL", node).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	return n, nil
}

// storeTable qualifies a store table with schema, which must be a plain
// lower-case identifier (as pgstore requires).
func storeTable(schema, table string) (string, error) {
	if schema == "" {
		return table, nil
	}
	for _, c := range schema {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return "", fmt.Errorf("crashcheck: store schema %q: letters a-z, digits and _ only", schema)
		}
	}
	return schema + "." + table, nil
}
