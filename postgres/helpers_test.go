package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/postgres"
)

// env is one test's view of the server: an admin pool for setup and
// checks, and a resource with its own pool, so that leaks show in its stats.
type env struct {
	t     *testing.T
	url   string
	admin *pgxpool.Pool
	pool  *pgxpool.Pool
	r     *postgres.Resource
	sfx   string
}

func newEnv(t *testing.T, opts ...postgres.Option) *env {
	t.Helper()
	url := dbtest.PG(t)
	e := &env{t: t, url: url, sfx: fmt.Sprintf("%08x", rand.Uint32())}
	e.admin = newPool(t, url, 8)
	e.pool = newPool(t, url, 24)
	e.r = postgres.New("pg-test", e.pool, opts...)
	return e
}

func newPool(t *testing.T, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	// A test that fails half way may leave a lock behind; its cleanup
	// must then fail rather than hang.
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "10s"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closePool(t, pool) })
	return pool
}

// closePool closes pool, failing the test instead of hanging when a
// connection was never given back (pgxpool.Close waits for them all).
func closePool(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pool.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("pgxpool.Close blocked for 10s: %d connections were never released", pool.Stat().AcquiredConns())
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.admin.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) queryInt(sql string, args ...any) int64 {
	e.t.Helper()
	var n int64
	if err := e.admin.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// table creates a table named after the test's suffix and drops it at the end.
func (e *env) table(name, columns string) string {
	e.t.Helper()
	full := name + "_" + e.sfx
	e.exec("CREATE TABLE " + full + " (" + columns + ")")
	e.t.Cleanup(func() { e.exec("DROP TABLE IF EXISTS " + full) })
	return full
}

// preparedCount counts pg_prepared_xacts rows with this gid.
func (e *env) preparedCount(gid string) int64 {
	e.t.Helper()
	return e.queryInt("SELECT COUNT(*) FROM pg_prepared_xacts WHERE gid = $1", gid)
}

// begin starts a branch and returns both sides: the protocol branch and the
// application handle.
func (e *env) begin(ctx context.Context) (drivers.Branch, *postgres.Branch) {
	e.t.Helper()
	return e.beginOn(ctx, e.r)
}

func (e *env) beginOn(ctx context.Context, r *postgres.Resource) (drivers.Branch, *postgres.Branch) {
	e.t.Helper()
	tx := &fakeTx{}
	h, err := r.Enlist(ctx, tx)
	if err != nil {
		e.t.Fatalf("Enlist: %v", err)
	}
	b := tx.b
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Rollback(ctx)
		_ = b.Close()
	})
	return b, h
}

// assertPoolClean checks that no connection is left pinned and that every
// pooled connection is idle outside a transaction.
func (e *env) assertPoolClean() {
	e.t.Helper()
	assertPoolClean(e.t, e.pool)
}

func assertPoolClean(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	// A dropped connection stays "acquired" until pgxpool's destructor,
	// which runs asynchronously, has closed it.
	for deadline := time.Now().Add(16 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n := pool.Stat().AcquiredConns()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d connections still acquired from the resource's pool", n)
			break
		}
	}
	conns := pool.AcquireAllIdle(context.Background())
	for _, c := range conns {
		if s := c.Conn().PgConn().TxStatus(); s != 'I' {
			t.Errorf("pooled connection in transaction state %q", s)
		}
		c.Release()
	}
}

// fakeTx is a one-branch drivers.Enlister: what xa.Tx does, minus the rest.
type fakeTx struct {
	b   drivers.Branch
	xid drivers.XID
}

func (f *fakeTx) Enlist(ctx context.Context, r drivers.Resource) (drivers.Branch, error) {
	if f.b != nil {
		return f.b, nil
	}
	if f.xid.Global.IsZero() {
		f.xid = drivertest.NewXID()
	}
	b, err := r.Begin(ctx, f.xid)
	if err != nil {
		return nil, err
	}
	f.b = b
	return b, nil
}

// handleOf returns the application handle of a branch begun elsewhere.
func handleOf(ctx context.Context, r *postgres.Resource, b drivers.Branch) (*postgres.Branch, error) {
	return r.Enlist(ctx, &fakeTx{b: b})
}

// wantClass asserts err is an *drivers.Error of class kind.
func wantClass(t *testing.T, what string, err, kind error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: nil error, want class %q", what, kind)
	}
	var de *drivers.Error
	if !errors.As(err, &de) {
		t.Fatalf("%s: %v (%T) is not a *drivers.Error", what, err, err)
	}
	if got := drivers.Classify(err); got != kind {
		t.Fatalf("%s: class %v, want %q (error: %v)", what, got, kind, err)
	}
}

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("%s: %v has no *pgconn.PgError", what, err)
	}
	if pe.Code != code {
		t.Fatalf("%s: SQLSTATE %s, want %s (%v)", what, pe.Code, code, err)
	}
}

// backendPID returns the branch session's backend pid.
func backendPID(ctx context.Context, t *testing.T, h *postgres.Branch) int64 {
	t.Helper()
	var pid int64
	if err := h.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// terminate ends a backend and waits until it is gone, so that what
// follows sees a dead session, not a dying one.
func (e *env) terminate(pid int64) {
	e.t.Helper()
	if e.queryInt("SELECT pg_terminate_backend($1)::int", pid) != 1 {
		e.t.Fatalf("pg_terminate_backend(%d) failed", pid)
	}
	e.waitFor(fmt.Sprintf("backend %d to exit", pid), func() bool {
		return e.queryInt("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0
	})
}

// waitFor polls cond with a bounded exponential backoff.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	delay := time.Millisecond
	for deadline := time.Now().Add(15 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// prepareRaw leaves a prepared transaction with any gid, from a connection
// of its own to url; the cleanup rolls it back (if still there).
func prepareRaw(t *testing.T, url, gid string) (cleanup func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	lit := "'" + strings.ReplaceAll(gid, "'", "''") + "'"
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	tag, err := conn.Exec(ctx, "PREPARE TRANSACTION "+lit)
	if err != nil || tag.String() != "PREPARE TRANSACTION" {
		t.Fatalf("PREPARE TRANSACTION %s: %q %v", lit, tag, err)
	}
	return func() {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		var n int
		_ = conn.QueryRow(ctx, "SELECT COUNT(*) FROM pg_prepared_xacts WHERE gid = $1", gid).Scan(&n)
		if n == 0 {
			return
		}
		if _, err := conn.Exec(ctx, "ROLLBACK PREPARED "+lit); err != nil {
			t.Errorf("ROLLBACK PREPARED %s: %v", lit, err)
		}
	}
}

// newEnvSuffix returns a random suffix for names a test creates.
func newEnvSuffix() string { return fmt.Sprintf("%08x", rand.Uint32()) }
