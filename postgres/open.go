package postgres

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/redact"
)

func init() {
	drivers.Register("postgres", open)
	drivers.Register("postgresql", open)
}

// open is the drivers.Opener for postgres:// and postgresql:// URLs.
func open(ctx context.Context, name, rawURL string) (drivers.Resource, io.Closer, error) {
	pool, err := NewPool(ctx, rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("resource %s: %w", name, err)
	}
	return New(name, pool), closerFunc(pool.Close), nil
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// NewPool makes a pgxpool.Pool from a postgres:// or postgresql:// URL (or a
// keyword/value connection string), with pgx's pool settings in the query
// string (pool_max_conns, ...). It does not connect: the first use does.
// Errors never contain the password.
func NewPool(ctx context.Context, rawURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		// pgx masks passwords in its parse errors only on a best-effort
		// basis: the message is cleaned again.
		return nil, fmt.Errorf("postgres: invalid connection URL %s: %s", redact.URL(rawURL), redact.Scrub(rawURL)(err.Error()))
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %s", redact.URL(rawURL), redact.Scrub(rawURL)(err.Error()))
	}
	return pool, nil
}
