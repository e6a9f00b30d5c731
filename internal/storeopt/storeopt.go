// Package storeopt is where a command line's shared decision store comes
// from: the --store URL and --store-schema options of the xabridge
// commands, checked in one place (cmd/xabridge, internal/bench,
// internal/demo and internal/selfcheck use it), and the connection to it.
// Every error names the problem and never shows the URL's password.
package storeopt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/internal/redact"
)

// Options name a shared decision store (decisionlog/pgstore): a
// PostgreSQL database and the schema of its tables. The zero value means
// none (a file log).
type Options struct {
	URL    string // postgres://user:pass@host:port/db; "" means no store
	Schema string // pgstore.Options.Schema; "" means the connection's search_path
}

// ErrInvalid marks a malformed store option (a usage error).
var ErrInvalid = errors.New("invalid store option")

// ErrUnreachable: the store's database could not be reached (or refused
// the login); nothing was read or changed.
var ErrUnreachable = errors.New("store unreachable")

// Enabled reports whether a store is configured.
func (o Options) Enabled() bool { return o.URL != "" }

// Redacted is the URL with its password masked.
func (o Options) Redacted() string { return redact.URL(o.URL) }

// Database names the store's database for messages: host/db, without the
// user or password.
func (o Options) Database() string {
	u, err := url.Parse(o.URL)
	if err != nil {
		return "(withheld)"
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" {
		db = "(the user's default database)"
	}
	return db + " on " + first(u.Host, "localhost")
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Validate checks the options without connecting: a postgres:// or
// postgresql:// URL that pgx can parse, with an unambiguous password, and a
// valid schema name. A schema without a URL is an error too. Every error
// wraps ErrInvalid.
func (o Options) Validate() error {
	if o.URL == "" {
		if o.Schema != "" {
			return fmt.Errorf("%w: --store-schema %q given without --store", ErrInvalid, o.Schema)
		}
		return nil
	}
	if redact.Ambiguous(o.URL) {
		return fmt.Errorf("%w: --store %s: percent-encode the password's @ : / # ? characters (@ is %%40, / is %%2F, # is %%23); as written, part of it would be read as the host or database", ErrInvalid, o.Redacted())
	}
	scheme, _, ok := strings.Cut(o.URL, "://")
	if !ok {
		return fmt.Errorf("%w: --store %s: want a PostgreSQL URL, postgres://user:pass@host:port/db", ErrInvalid, o.Redacted())
	}
	if s := strings.ToLower(scheme); s != "postgres" && s != "postgresql" {
		return fmt.Errorf("%w: --store %s: the shared decision store is a PostgreSQL database (postgres://...), not %s", ErrInvalid, o.Redacted(), printable(scheme))
	}
	if _, err := url.Parse(o.URL); err != nil {
		return fmt.Errorf("%w: --store %s: not a valid URL", ErrInvalid, o.Redacted())
	}
	if _, err := pgxpool.ParseConfig(o.URL); err != nil {
		// pgx's message may quote parts of the URL: name the problem
		// without it.
		return fmt.Errorf("%w: --store %s: not a valid PostgreSQL URL (%s)", ErrInvalid, o.Redacted(), redact.Scrub(o.URL)(parseReason(err)))
	}
	if o.Schema != "" {
		if err := pgstore.ValidateSchema(o.Schema); err != nil {
			return fmt.Errorf("%w: --store-schema: %s", ErrInvalid, strings.TrimPrefix(err.Error(), "pgstore: "))
		}
	}
	return nil
}

// parseReason is the last part of a pgx parse error, which says what is
// wrong ("invalid port", ...) after the quoted connection string.
func parseReason(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return "unparsable"
}

func printable(s string) string {
	if len(s) > 20 {
		s = s[:20] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// Connect validates the options and opens a small pool on the store's
// database, checked with a ping within timeout (0: 10s). An unreachable
// database, or one refusing the login, is an error wrapping ErrUnreachable
// naming the database but not the password. The caller closes the pool.
func Connect(ctx context.Context, o Options, maxConns int32, timeout time.Duration) (*pgxpool.Pool, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: --store %s: not a valid PostgreSQL URL", ErrInvalid, o.Redacted())
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > timeout {
		cfg.ConnConfig.ConnectTimeout = timeout
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(pctx, cfg)
	if err == nil {
		err = pool.Ping(pctx)
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: store database %s (%s): %s", ErrUnreachable, o.Database(), o.Redacted(), redact.Scrub(o.URL)(err.Error()))
	}
	return pool, nil
}

// Check reports, without creating anything, whether the store's tables
// exist in the database (an error wrapping pgstore.ErrNoStore naming the
// database when they do not): commands that read or recover never create
// a store, only a coordinator does.
func Check(ctx context.Context, o Options, pool *pgxpool.Pool) error {
	err := pgstore.CheckStore(ctx, pool, o.Schema)
	if errors.Is(err, pgstore.ErrNoStore) {
		where := ""
		if o.Schema != "" {
			where = " (schema " + o.Schema + ")"
		}
		return noStoreError{fmt.Sprintf("no xabridge store in database %s%s: its tables do not exist; only a coordinator creates them (check --store and --store-schema)",
			o.Database(), where)}
	}
	if err != nil {
		return fmt.Errorf("store database %s: %w", o.Database(), err)
	}
	return nil
}

// noStoreError is Check's refusal of a database without a store; it
// matches pgstore.ErrNoStore.
type noStoreError struct{ msg string }

func (e noStoreError) Error() string        { return e.msg }
func (e noStoreError) Is(target error) bool { return target == pgstore.ErrNoStore }
