package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/storeopt"
)

// storeHelp is the help of --store on every command that takes it.
const storeHelp = "the shared decision store, a PostgreSQL URL postgres://user:pass@host:port/db, instead of --log-dir (env XABRIDGE_STORE; config key \"store\")"

// storeSchemaHelp is the help of --store-schema.
const storeSchemaHelp = "PostgreSQL schema of the store's tables (env XABRIDGE_STORE_SCHEMA; config key \"store_schema\"; default: the connection's search_path)"

// addStoreFlags gives an operator command --store and --store-schema.
func addStoreFlags(cmd *cobra.Command, o *opsConfig) {
	o.withStore = true
	addStoreFlagSet(cmd.Flags(), &o.store, &o.storeSet, &o.storeSchema, &o.storeSchemaSet)
}

// addStoreFlagSet defines --store and --store-schema on f. The help never
// shows a value (a URL may hold a password), only where it comes from.
func addStoreFlagSet(f *pflag.FlagSet, url *string, urlSet *bool, schema *string, schemaSet *bool) {
	f.Var(&setString{url, urlSet}, "store", storeHelp)
	f.Var(&setString{schema, schemaSet}, "store-schema", storeSchemaHelp)
}

// storeFlags are --store and --store-schema for the commands that take no
// other operator option (demo transfer, selfcheck, bench, log): flag over
// environment; the config file is the operator commands'.
type storeFlags struct {
	url, schema       string
	urlSet, schemaSet bool
}

func (s *storeFlags) add(f *pflag.FlagSet) {
	addStoreFlagSet(f, &s.url, &s.urlSet, &s.schema, &s.schemaSet)
}

// options resolves the flags over XABRIDGE_STORE / XABRIDGE_STORE_SCHEMA
// and validates them (usage errors). logDirFlag says whether --log-dir was
// given on the command line: with a store from the flags, that is a
// conflict; a store from the environment gives way to it.
func (s *storeFlags) options(logDirFlag bool) (storeopt.Options, error) {
	if s.urlSet && s.url == "" {
		return storeopt.Options{}, usagef("--store is empty")
	}
	o := storeopt.Options{URL: s.url, Schema: s.schema}
	if !s.urlSet {
		o.URL = os.Getenv("XABRIDGE_STORE")
		if logDirFlag {
			o.URL = "" // --log-dir on the command line beats the environment
		}
	}
	if !s.schemaSet && o.URL != "" {
		o.Schema = os.Getenv("XABRIDGE_STORE_SCHEMA")
	}
	if s.urlSet && logDirFlag {
		return storeopt.Options{}, errStoreAndLogDir
	}
	if err := o.Validate(); err != nil {
		return storeopt.Options{}, usageError{err}
	}
	return o, nil
}

var errStoreAndLogDir = usagef("--store and --log-dir exclude each other: give the shared decision store or the node's file log, not both")

// resolveStore sets r.store from --store over XABRIDGE_STORE over the
// config file's "store", and settles the conflict with the log directory:
// given at the same level (both flags, both in the environment, both in
// the config file), --store and --log-dir are a usage error; otherwise
// the more specific one wins (a flag over the environment over the file).
func (o *opsConfig) resolveStore(r *resolved, fc fileConfig) error {
	if o.storeSet && o.store == "" {
		return usagef("--store is empty")
	}
	if o.storeSchemaSet && o.storeSchema == "" {
		return usagef("--store-schema is empty")
	}
	level := func(flag, env, file string) int {
		switch {
		case flag != "":
			return 3
		case env != "":
			return 2
		case file != "":
			return 1
		}
		return 0
	}
	sl := level(o.store, os.Getenv("XABRIDGE_STORE"), fc.Store)
	ll := level(o.logDir, os.Getenv("XABRIDGE_LOG_DIR"), fc.LogDir)
	if o.storeOnly {
		ll = 0 // the command has no file-log mode
	}
	switch {
	case sl == 0:
		if o.storeSchema != "" {
			return usagef("--store-schema given without --store")
		}
		return nil
	case sl == ll:
		where := map[int]string{3: "on the command line", 2: "in the environment (XABRIDGE_STORE, XABRIDGE_LOG_DIR)", 1: "in the config file (store, log_dir)"}[sl]
		return usagef("--store and --log-dir exclude each other, and both are given %s: give the shared decision store or the node's file log, not both", where)
	case ll > sl:
		return nil // the log directory is the more specific choice
	}
	r.store = storeopt.Options{
		URL:    first(o.store, os.Getenv("XABRIDGE_STORE"), fc.Store),
		Schema: first(o.storeSchema, os.Getenv("XABRIDGE_STORE_SCHEMA"), fc.StoreSchema),
	}
	if err := r.store.Validate(); err != nil {
		return usageError{err}
	}
	r.logDir = ""
	return nil
}

// storeConnectTimeout bounds connecting to the store.
const storeConnectTimeout = 10 * time.Second

// openStoreReader connects to the store and opens it read-only: no lease
// is taken, nothing is created (a database without the store's tables is
// refused: "no xabridge store in database X").
func openStoreReader(ctx context.Context, so storeopt.Options) (*pgstore.Reader, func(), error) {
	pool, err := storeopt.Connect(ctx, so, 4, storeConnectTimeout)
	if err != nil {
		return nil, nil, err
	}
	if err := storeopt.Check(ctx, so, pool); err != nil {
		pool.Close()
		return nil, nil, err
	}
	rd, err := pgstore.OpenReader(ctx, pool, pgstore.ReaderOptions{Schema: so.Schema})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return rd, pool.Close, nil
}

// openStoreNodes opens the store read-only (openStoreReader) and lists
// the nodes that have a lease in it; the caller calls the returned func
// when done with the reader.
func openStoreNodes(ctx context.Context, so storeopt.Options) (*pgstore.Reader, []pgstore.NodeInfo, func(), error) {
	rd, closeStore, err := openStoreReader(ctx, so)
	if err != nil {
		return nil, nil, nil, err
	}
	nodes, err := rd.Nodes(ctx)
	if err != nil {
		closeStore()
		return nil, nil, nil, err
	}
	return rd, nodes, closeStore, nil
}

// operatorNode is the node id under which operator commands (recover,
// resolve) hold a lease in the store while they act: they claim a dead
// node's lease under it, as a replica does, so that a coordinator of that
// node or a replica taking it over cannot act at the same time. One
// operator command acts on a store at a time.
const operatorNode = "xabridge-cli"

// openOperatorStore connects to an existing store and opens it under the
// operator's node id (its lease shows in xabridge nodes while the command
// runs; Close releases it).
func openOperatorStore(ctx context.Context, so storeopt.Options) (*pgstore.Store, *pgxpool.Pool, func(), error) {
	pool, err := storeopt.Connect(ctx, so, 4, storeConnectTimeout)
	if err != nil {
		return nil, nil, nil, err
	}
	// Check first: pgstore.Open would create the tables, and a recover or
	// resolve must never create a store (a mistyped database would then
	// look like a store without decisions).
	if err := storeopt.Check(ctx, so, pool); err != nil {
		pool.Close()
		return nil, nil, nil, err
	}
	st, err := pgstore.Open(ctx, pool, pgstore.Options{Node: operatorNode, Schema: so.Schema, SweepEvery: -1})
	if err != nil {
		pool.Close()
		var le *pgstore.LeasedError
		if errors.As(err, &le) {
			return nil, nil, nil, fmt.Errorf("another operator command is acting on this store (node %s held by %s until %s): wait for it to finish", operatorNode, holderText(le.Holder), le.ExpiresAt.UTC().Format(time.RFC3339))
		}
		return nil, nil, nil, err
	}
	return st, pool, func() { _ = st.Close(); pool.Close() }, nil
}

// holderText names a lease holder briefly: host/pid, and its node when it
// holds another node's lease.
func holderText(h pgstore.Holder) string {
	return fmt.Sprintf("%s/%d", h.Host, h.PID)
}

// refuseLive is the refusal to act on a node whose lease is held: by its
// own live coordinator, or by a replica (or operator) taking it over.
func refuseLive(ni pgstore.NodeInfo) error {
	until := ni.ExpiresAt.UTC().Format(time.RFC3339)
	if ni.State == pgstore.NodeTakenOver {
		return fmt.Errorf("node %s is being taken over by node %s (%s, lease until %s); it settles the node's transactions: %w",
			ni.Node, ni.Holder.Node, holderText(ni.Holder), until, pgstore.ErrNodeLeased)
	}
	return fmt.Errorf("node %s is live (held by %s until %s); its own coordinator recovers it: %w",
		ni.Node, holderText(ni.Holder), until, pgstore.ErrNodeLeased)
}

// leasedRefusal turns a claim refused with a *LeasedError into refuseLive's
// words.
func leasedRefusal(node string, err error) error {
	var le *pgstore.LeasedError
	if errors.As(err, &le) {
		st := pgstore.NodeLive
		if le.Holder.Node != node {
			st = pgstore.NodeTakenOver
		}
		return refuseLive(pgstore.NodeInfo{Node: node, Epoch: le.Epoch, Holder: le.Holder, ExpiresAt: le.ExpiresAt, State: st})
	}
	if errors.Is(err, pgstore.ErrUnknownNode) {
		return fmt.Errorf("node %s has no lease in this store: its decisions are not kept here (a file-log node? give its --log-dir): %w", node, err)
	}
	return err
}

// validNode checks a node id given on the command line.
func validNode(flag, n string) error {
	if err := drivers.ValidateNodeID(n); err != nil {
		return usagef("%s: %v", flag, err)
	}
	return nil
}
