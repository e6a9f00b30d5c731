package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SchemaVersion is the version of the tables this package creates and
// expects, kept in the meta table. A store refuses to open tables of a newer
// version (written by a newer xabridge); older versions are migrated by
// Open when there are any.
const SchemaVersion = 1

// The tables of a store. The names are constants; only the PostgreSQL
// schema that holds them (Options.Schema) varies, and it is validated.
const (
	TableMeta      = "xabridge_store_meta"
	TableNodes     = "xabridge_store_nodes"
	TableDecisions = "xabridge_store_decisions"
	TableActions   = "xabridge_store_actions"
)

// schemaLockKey is the pg_advisory_xact_lock key that serialises schema
// creation and migration among processes opening a store at the same time
// (CREATE TABLE IF NOT EXISTS alone can collide on the catalog). It is the
// int64 of the bytes "xabrstor".
const schemaLockKey int64 = 0x7861627273746f72

// ddl is the schema, version 1. {meta}, {nodes}, {decisions}, {actions}
// and {prefix} are replaced by validated, quoted names (see sqlNames).
const ddl = `
CREATE TABLE IF NOT EXISTS {meta} (
	id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
	version    integer     NOT NULL,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS {nodes} (
	node        text        PRIMARY KEY,
	epoch       bigint      NOT NULL CHECK (epoch > 0),
	holder_node text        NOT NULL,
	host        text        NOT NULL,
	pid         integer     NOT NULL,
	started_at  timestamptz NOT NULL,
	incarnation text        NOT NULL,
	acquired_at timestamptz NOT NULL,
	renewed_at  timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {decisions} (
	gtrid        text        PRIMARY KEY,
	node         text        NOT NULL,
	state        char(1)     NOT NULL CHECK (state IN ('C', 'A')),
	epoch        bigint      NOT NULL,
	seq          bigint      GENERATED ALWAYS AS IDENTITY,
	participants jsonb,
	decided_at   timestamptz NOT NULL,
	deadline     timestamptz NOT NULL,
	written_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
	ended_at     timestamptz
);
CREATE INDEX IF NOT EXISTS {prefix}decisions_pending ON {decisions} (node, seq) WHERE state = 'C' AND ended_at IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}decisions_ended ON {decisions} (node, ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prefix}decisions_aborts ON {decisions} (node, deadline) WHERE state = 'A';
CREATE TABLE IF NOT EXISTS {actions} (
	id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	gtrid      text        NOT NULL,
	node       text        NOT NULL,
	epoch      bigint      NOT NULL,
	resource   text        NOT NULL,
	branch     smallint    NOT NULL,
	op         text        NOT NULL,
	reason     text        NOT NULL,
	actor      text        NOT NULL,
	heuristic  boolean     NOT NULL,
	at         timestamptz NOT NULL,
	written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS {prefix}actions_gtrid ON {actions} (gtrid, id);
CREATE INDEX IF NOT EXISTS {prefix}actions_orphans ON {actions} (node, written_at) WHERE NOT heuristic;
`

// ErrSchemaVersion: the store's tables were created by a newer xabridge
// (a higher SchemaVersion) than this one understands.
var ErrSchemaVersion = errors.New("pgstore: store schema is newer than this xabridge")

// sqlNames expands the table placeholders of the package's SQL for one
// PostgreSQL schema.
type sqlNames struct {
	schema string // "" for the search_path
	r      *strings.Replacer
}

// validSchemaName accepts a plain lower-case identifier, so the name needs
// no case folding to be found again and cannot carry anything but a name.
func validSchemaName(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("pgstore: schema name %q must be 1 to 63 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return fmt.Errorf("pgstore: schema name %q may only contain a-z, 0-9 and _ (not first)", s)
		}
	}
	return nil
}

func newSQLNames(schema string) (sqlNames, error) {
	q := func(t string) string { return pgx.Identifier{t}.Sanitize() }
	if schema != "" {
		if err := validSchemaName(schema); err != nil {
			return sqlNames{}, err
		}
		q = func(t string) string { return pgx.Identifier{schema, t}.Sanitize() }
	}
	return sqlNames{schema: schema, r: strings.NewReplacer(
		"{meta}", q(TableMeta),
		"{nodes}", q(TableNodes),
		"{decisions}", q(TableDecisions),
		"{actions}", q(TableActions),
		// Index names take no schema: an index lives in its table's schema.
		"{prefix}", "xabridge_store_",
	)}, nil
}

func (n sqlNames) sql(s string) string { return n.r.Replace(s) }

// ensureSchema creates the store's tables if they do not exist and checks
// their version, under a transaction-scoped advisory lock so that processes
// opening the store at once do not collide.
func ensureSchema(ctx context.Context, pool *pgxpool.Pool, n sqlNames) error {
	// The usual case, tables already there at this version, without DDL:
	// CREATE INDEX IF NOT EXISTS takes a SHARE lock on its table even when
	// the index exists, which would stall every other coordinator's
	// decision writes while this one opens.
	var v int
	err := pool.QueryRow(ctx, n.sql(`SELECT version FROM {meta}`)).Scan(&v)
	switch {
	case err == nil && v == SchemaVersion:
		return nil
	case err == nil && v > SchemaVersion:
		return fmt.Errorf("%w: the tables are version %d, this xabridge knows %d", ErrSchemaVersion, v, SchemaVersion)
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
			return fmt.Errorf("pgstore: lock schema: %w", err)
		}
		if n.schema != "" {
			if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{n.schema}.Sanitize()); err != nil {
				return fmt.Errorf("pgstore: create schema %s: %w", n.schema, err)
			}
		}
		// No arguments: the simple protocol, which runs several statements.
		if _, err := tx.Exec(ctx, n.sql(ddl), pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("pgstore: create store tables: %w", err)
		}
		var v int
		err := tx.QueryRow(ctx, n.sql(`INSERT INTO {meta} (id, version) VALUES (true, $1)
			ON CONFLICT (id) DO UPDATE SET version = {meta}.version RETURNING version`), SchemaVersion).Scan(&v)
		if err != nil {
			return fmt.Errorf("pgstore: read store schema version: %w", err)
		}
		switch {
		case v > SchemaVersion:
			return fmt.Errorf("%w: the tables are version %d, this xabridge knows %d", ErrSchemaVersion, v, SchemaVersion)
		case v < SchemaVersion:
			// No older version exists yet; a migration goes here.
			return fmt.Errorf("pgstore: store schema version %d has no migration to %d", v, SchemaVersion)
		}
		return nil
	})
}
