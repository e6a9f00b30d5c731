package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// ErrNoStore: the database (in the schema asked for) holds no xabridge
// store: its tables do not exist. OpenReader never creates them; only
// Open, which a coordinator calls, does.
var ErrNoStore = errors.New("pgstore: no xabridge store in this database")

// ErrReadOnly: a write through a Reader's log. A Reader holds no lease, so
// it never writes anything.
var ErrReadOnly = errors.New("pgstore: read-only view of the store (no lease held): nothing written")

// ReaderOptions configures OpenReader.
type ReaderOptions struct {
	// Schema is Options.Schema: the PostgreSQL schema holding the tables
	// (empty: the connection's search_path).
	Schema string
	// ReadTimeout bounds the Log methods that take no context (default
	// DefaultReadTimeout).
	ReadTimeout time.Duration
}

// Reader reads a store without taking any lease and without creating
// anything: what operators' read-only tools (xabridge list, show, nodes,
// log dump) need, while the coordinators keep running. It starts no
// goroutine; Close does nothing (the pool stays the caller's).
type Reader struct {
	s *Store // a Store without leases or background work: only its reads are used
}

// OpenReader checks that the database holds a store of a version this
// package understands and returns a Reader on it. It fails with an error
// matching ErrNoStore when the store's tables do not exist (it creates
// nothing), ErrSchemaVersion when they are newer than this package.
func OpenReader(ctx context.Context, pool *pgxpool.Pool, opts ReaderOptions) (*Reader, error) {
	if pool == nil {
		return nil, errors.New("pgstore: nil pool")
	}
	names, err := newSQLNames(opts.Schema)
	if err != nil {
		return nil, err
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	s := &Store{pool: pool, names: names, opts: Options{Schema: opts.Schema, ReadTimeout: opts.ReadTimeout},
		leases: map[string]*lease{}, known: map[string]struct{}{}, ending: map[string]struct{}{}}
	s.prepareSQL()
	if err := checkStore(ctx, pool, names); err != nil {
		return nil, err
	}
	return &Reader{s: s}, nil
}

// CheckStore reports whether the database holds a store in schema (""
// for the search_path) of a version this package understands, without
// creating anything: nil, or an error matching ErrNoStore or
// ErrSchemaVersion, or the database's error.
func CheckStore(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	names, err := newSQLNames(schema)
	if err != nil {
		return err
	}
	return checkStore(ctx, pool, names)
}

func checkStore(ctx context.Context, pool *pgxpool.Pool, n sqlNames) error {
	// to_regclass answers NULL for a missing table instead of failing, so
	// that the check does not abort anything and needs no privilege on it.
	var missing int
	err := pool.QueryRow(ctx, n.sql(`SELECT (to_regclass($1) IS NULL)::int + (to_regclass($2) IS NULL)::int
		+ (to_regclass($3) IS NULL)::int + (to_regclass($4) IS NULL)::int`),
		qualified(n.schema, TableMeta), qualified(n.schema, TableNodes), qualified(n.schema, TableDecisions),
		qualified(n.schema, TableActions)).Scan(&missing)
	if err != nil {
		return fmt.Errorf("pgstore: looking for the store's tables: %w", err)
	}
	if missing > 0 {
		where := "the search_path"
		if n.schema != "" {
			where = "schema " + n.schema
		}
		return fmt.Errorf("%w (%d of its 4 tables missing in %s)", ErrNoStore, missing, where)
	}
	var v int
	if err := pool.QueryRow(ctx, n.sql(`SELECT version FROM {meta}`)).Scan(&v); err != nil {
		if isNoRows(err) {
			return fmt.Errorf("%w (its version row is missing)", ErrNoStore)
		}
		return fmt.Errorf("pgstore: read store schema version: %w", err)
	}
	if v > SchemaVersion {
		return fmt.Errorf("%w: the tables are version %d, this xabridge knows %d", ErrSchemaVersion, v, SchemaVersion)
	}
	return nil
}

// qualified is a table name as to_regclass reads it.
func qualified(schema, table string) string {
	if schema == "" {
		return pgx.Identifier{table}.Sanitize()
	}
	return pgx.Identifier{schema, table}.Sanitize()
}

// Nodes is Store.Nodes.
func (r *Reader) Nodes(ctx context.Context) ([]NodeInfo, error) { return r.s.Nodes(ctx) }

// NodeInfo is Store.NodeInfo.
func (r *Reader) NodeInfo(ctx context.Context, node string) (NodeInfo, error) {
	return r.s.NodeInfo(ctx, node)
}

// LookupContext is Store.LookupContext.
func (r *Reader) LookupContext(ctx context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	return r.s.LookupContext(ctx, g)
}

// PendingContext is Store.PendingContext.
func (r *Reader) PendingContext(ctx context.Context, node string) ([]decisionlog.Decision, error) {
	return r.s.PendingContext(ctx, node)
}

// entriesSQL reads every transaction the store knows (of one node, or of
// all when $1 is empty) in one statement: decision rows and transactions
// with actions only.
const entriesSQL = `
WITH g AS (
	SELECT gtrid FROM {decisions} WHERE $1 = '' OR node = $1
	UNION
	SELECT gtrid FROM {actions} WHERE $1 = '' OR node = $1)
SELECT g.gtrid, d.state, d.participants::text, d.decided_at, d.ended_at IS NOT NULL,
	(SELECT coalesce(json_agg(json_build_object(
		'r', a.resource, 'b', a.branch, 'op', a.op, 'why', a.reason, 'by', a.actor,
		'h', a.heuristic, 'at', a.at) ORDER BY a.id), '[]')
	 FROM {actions} a WHERE a.gtrid = g.gtrid)
FROM g LEFT JOIN {decisions} d ON d.gtrid = g.gtrid
ORDER BY g.gtrid`

// Entries returns every transaction the store holds rows for, of node
// (or of every node when node is empty), by global id.
func (r *Reader) Entries(ctx context.Context, node string) ([]decisionlog.Entry, error) {
	if node != "" {
		if err := drivers.ValidateNodeID(node); err != nil {
			return nil, fmt.Errorf("pgstore: entries: %w", err)
		}
	}
	rows, err := r.s.pool.Query(ctx, r.s.names.sql(entriesSQL), node)
	if err != nil {
		return nil, fmt.Errorf("pgstore: entries: %w", err)
	}
	var (
		out     []decisionlog.Entry
		key     string
		state   *string
		parts   *string
		at      *time.Time
		ended   *bool
		actions []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &state, &parts, &at, &ended, &actions}, func() error {
		g, err := drivers.ParseGlobalID(key)
		if err != nil {
			return fmt.Errorf("gtrid %q: %w", key, err)
		}
		e, err := decodeEntry(g, state, parts, at, ended, actions)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: entries: %w", err)
	}
	return out, nil
}

// Log returns a read-only decisionlog.Log of node, for tools that scan
// (recovery's Scan, a dry run): Lookup and Pending read the store (and it
// is a decisionlog.CheckedReader, whose reads return their errors);
// Commit, Abort, Record and End write nothing and return ErrReadOnly.
func (r *Reader) Log(node string) (decisionlog.Log, error) {
	if err := drivers.ValidateNodeID(node); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return readOnlyLog{r: r, node: node}, nil
}

// Close does nothing: a Reader holds no lease and runs nothing; the pool
// is the caller's.
func (r *Reader) Close() error { return nil }

type readOnlyLog struct {
	r    *Reader
	node string
}

func (l readOnlyLog) Commit(context.Context, decisionlog.Decision) error { return ErrReadOnly }
func (l readOnlyLog) Abort(context.Context, decisionlog.Action) error    { return ErrReadOnly }
func (l readOnlyLog) Record(context.Context, decisionlog.Action) error   { return ErrReadOnly }
func (l readOnlyLog) End(drivers.GlobalID) error                         { return ErrReadOnly }
func (l readOnlyLog) Close() error                                       { return nil }

// Lookup answers found = false when the read fails; LookupChecked
// returns the error (recovery and the CLI use it: a failed read is never
// "no decision").
func (l readOnlyLog) Lookup(g drivers.GlobalID) (decisionlog.Entry, bool) {
	e, found, err := l.LookupChecked(context.Background(), g)
	if err != nil {
		return decisionlog.Entry{}, false
	}
	return e, found
}

func (l readOnlyLog) LookupChecked(ctx context.Context, g drivers.GlobalID) (decisionlog.Entry, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, l.r.s.opts.ReadTimeout)
	defer cancel()
	return l.r.s.LookupContext(ctx, g)
}

// Pending answers nil when the read fails; PendingChecked returns the
// error.
func (l readOnlyLog) Pending() []decisionlog.Decision {
	ds, _ := l.PendingChecked(context.Background())
	return ds
}

func (l readOnlyLog) PendingChecked(ctx context.Context) ([]decisionlog.Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, l.r.s.opts.ReadTimeout)
	defer cancel()
	return l.r.s.PendingContext(ctx, l.node)
}

// ValidateSchema checks a name for Options.Schema: 1 to 63 characters of
// a-z, 0-9 and _ (not first), so that it needs no quoting rules beyond
// pgx.Identifier and is found again as written.
func ValidateSchema(s string) error { return validSchemaName(s) }
