package postgres_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/postgres"
)

// noTwoPhaseURL starts (once; scripts/devdb is idempotent and serialised by
// a lock) a second throwaway PostgreSQL with max_prepared_transactions = 0
// and returns its URL. The server is left running for the next test binary,
// as dbtest does with the main servers; stop it with
//
//	XABRIDGE_DEVDB_DIR=/tmp/xab-pg0 XABRIDGE_DEVDB_PG_PORT=55433 XABRIDGE_DEVDB_ONLY=pg scripts/devdb down
func noTwoPhaseURL(t *testing.T) string {
	t.Helper()
	root, err := dbtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "scripts", "devdb")
	env := append(os.Environ(),
		"XABRIDGE_DEVDB_DIR=/tmp/xab-pg0",
		"XABRIDGE_DEVDB_PG_PORT=55433",
		"XABRIDGE_DEVDB_PG_MAXPREP=0",
		"XABRIDGE_DEVDB_ONLY=pg",
	)
	start := time.Now()
	var out bytes.Buffer
	up := exec.CommandContext(t.Context(), script, "up")
	up.Env, up.Stdout, up.Stderr = env, &out, &out
	if err := up.Run(); err != nil {
		t.Fatalf("%s up: %v\n%s", script, err, out.String())
	}
	t.Logf("second PostgreSQL (max_prepared_transactions=0) ready in %v", time.Since(start).Round(time.Millisecond))
	envCmd := exec.CommandContext(t.Context(), script, "env")
	envCmd.Env = env
	lines, err := envCmd.Output()
	if err != nil {
		t.Fatalf("%s env: %v", script, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(lines))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "export XABRIDGE_PG="); ok {
			return strings.Trim(v, "'")
		}
	}
	t.Fatalf("%s env printed no XABRIDGE_PG", script)
	return ""
}

// A server without two-phase commit gives a clear ErrUnsupported that says
// how to fix it, from Check and from Prepare.
func TestMaxPreparedTransactionsZero(t *testing.T) {
	url := noTwoPhaseURL(t)
	ctx := ctxT(t)
	pool := newPool(t, url, 4)
	r := postgres.New("pg-no2pc", pool)

	err := r.Check(ctx)
	wantClass(t, "Check", err, drivers.ErrUnsupported)
	for _, want := range []string{"max_prepared_transactions", "restart"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error does not mention %q: %v", want, err)
		}
	}

	tbl := "xab_pg_noprep_" + newEnvSuffix()
	if _, err := pool.Exec(ctx, "CREATE TABLE "+tbl+" (id BIGINT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TABLE "+tbl) })

	b, err := r.Begin(ctx, drivertest.NewXID())
	if err != nil {
		t.Fatal(err)
	}
	h, err := handleOf(ctx, r, b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	_, err = b.Prepare(ctx)
	wantClass(t, "Prepare", err, drivers.ErrUnsupported)
	for _, want := range []string{"max_prepared_transactions", "restart", "prepared transactions are disabled"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Prepare error does not mention %q: %v", want, err)
		}
	}
	if err := b.Rollback(ctx); err != nil {
		t.Errorf("Rollback: %v", err)
	}
	_ = b.Close()
	var n int64
	if err := pool.QueryRow(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&n); err != nil || n != 0 {
		t.Errorf("rows: %d %v", n, err)
	}

	// Recovery on such a server simply finds nothing.
	if ps, err := r.Recover(ctx); err != nil || len(ps) != 0 {
		t.Errorf("Recover: %v %v", ps, err)
	}
	wantClass(t, "CommitPrepared", r.CommitPrepared(ctx, drivertest.NewXID()), drivers.ErrNotFound)
	assertPoolClean(t, pool)
}
