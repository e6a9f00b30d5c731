package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// testPool connects to the test PostgreSQL (internal/dbtest) with url
// rewritten by rewrite, if set (to go through a fault proxy).
func testPool(t testing.TB, rewrite func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbtest.PG(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	if rewrite != nil {
		rewrite(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
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

// testSchema returns a fresh PostgreSQL schema name, dropped after the
// test, so that tests run in parallel and again without seeing each other.
func testSchema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "xbs_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+name+` CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", name, err)
		}
	})
	return name
}

// openStore opens a store on node in schema, closed after the test.
func openStore(t testing.TB, pool *pgxpool.Pool, schema, node string, mod func(*Options)) *Store {
	t.Helper()
	opts := Options{Node: node, Schema: schema, LeaseTTL: 5 * time.Second}
	if mod != nil {
		mod(&opts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, pool, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", node, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var seqs atomic.Uint32

// gid returns a fresh global id of node whose deadline is deadline.
func gid(node string, deadline time.Time) drivers.GlobalID {
	return drivers.MustGlobalID(node, deadline.Add(-time.Minute), seqs.Add(1), deadline)
}

// liveGid returns a fresh global id of node with a deadline a minute away.
func liveGid(node string) drivers.GlobalID { return gid(node, time.Now().Add(time.Minute)) }

// dbNow reads the database's clock.
func dbNow(t testing.TB, pool *pgxpool.Pool) time.Time {
	t.Helper()
	var now time.Time
	if err := pool.QueryRow(context.Background(), `SELECT clock_timestamp()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

// exec runs sql on pool (another connection than the store's writes may use).
func exec(t testing.TB, pool *pgxpool.Pool, schema, sql string, args ...any) int64 {
	t.Helper()
	n, err := newSQLNames(schema)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := pool.Exec(context.Background(), n.sql(sql), args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
