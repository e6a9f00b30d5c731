package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/internal/redact"
	"github.com/xabridge/xabridge/internal/storeopt"
)

// storeSuffix names the default store database: the --pg database's name
// with this appended.
const storeSuffix = "_store"

// DefaultStoreURL is the store database the xa-store mode uses when
// --store is not given: pgURL with its database name followed by "_store"
// (postgres://u@h/shop becomes postgres://u@h/shop_store), on the same
// server. It needs a postgres:// URL naming a database.
func DefaultStoreURL(pgURL string) (string, error) {
	u, _, err := defaultStore(pgURL)
	return u, err
}

// defaultStore is DefaultStoreURL, and the name of the database it names.
func defaultStore(pgURL string) (string, string, error) {
	u, err := url.Parse(pgURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", "", fmt.Errorf("--store: cannot derive the store's database from --pg %s (not a postgres:// URL); give --store postgres://…", redact.URL(pgURL))
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" || strings.Contains(db, "/") {
		return "", "", fmt.Errorf("--store: --pg %s names no database to derive the store's from; give --store postgres://…", redact.URL(pgURL))
	}
	name := db + storeSuffix
	// 63 bytes is PostgreSQL's identifier limit: a longer name would be
	// truncated silently, and then name another database.
	if len(name) > 63 {
		return "", "", fmt.Errorf("--store: the derived store database %q is longer than PostgreSQL's 63 bytes; give --store postgres://…", name)
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), name, nil
}

// storeURL is the store database of the xa-store mode, and the name of
// the database when it was derived (then Run creates it if missing); ""
// when --store names it.
func (o *Options) storeURL() (string, string, error) {
	if o.StoreURL != "" {
		return o.StoreURL, "", nil
	}
	return defaultStore(o.PGURL)
}

// needsStore reports whether a selected mode keeps its decisions in a
// store of the given kind.
func (o *Options) needsStore(kind string) bool {
	for _, m := range o.selected() {
		if m.store == kind {
			return true
		}
	}
	return false
}

// storeConnectTimeout bounds the connection to the store and its first
// ping.
const storeConnectTimeout = 10 * time.Second

// openStorePool connects to the xa-store mode's database (through
// storeopt, like every command's --store), first creating it (through the
// participant's pool, on the same server) when it is the derived default
// and missing. Errors never show a password.
func openStorePool(ctx context.Context, participant *pgxpool.Pool, o *Options) (*pgxpool.Pool, error) {
	raw, derived, err := o.storeURL()
	if err != nil {
		return nil, err
	}
	if derived != "" {
		if err := createDatabase(ctx, participant, derived); err != nil {
			return nil, fmt.Errorf("store database %q: %s", derived, redact.Scrub(raw, o.PGURL)(err.Error()))
		}
	}
	// The writer holds one connection per batch; the lease renewer and the
	// sweeper one each now and then.
	return storeopt.Connect(ctx, storeopt.Options{URL: raw}, 4, storeConnectTimeout)
}

// createDatabase creates database name on the server of pool unless it
// exists. Processes racing to create it (scripts/bench-processes) all
// succeed.
func createDatabase(ctx context.Context, pool *pgxpool.Pool, name string) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	// CREATE DATABASE takes no parameters: the name is quoted as an
	// identifier by pgx.
	_, err := pool.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P04" || pe.Code == "23505") {
		return nil // duplicate_database, or unique_violation when racing
	}
	return err
}

// openStore opens the shared store for node on pool, with the run's
// commit delay (the file log's too), failing
// with advice when a live process (an earlier bench still running, or
// one killed less than a lease ago) holds the node.
func openStore(ctx context.Context, pool *pgxpool.Pool, node string, commitDelay time.Duration) (*pgstore.Store, error) {
	st, err := pgstore.Open(ctx, pool, pgstore.Options{Node: node, CommitDelay: commitDelay})
	var le *pgstore.LeasedError
	if errors.As(err, &le) {
		return nil, fmt.Errorf("%w: is another bench running with --node-id %s? (a killed one's lease expires in %s)", err, node, le.ExpiresIn.Round(time.Second))
	}
	return st, err
}
