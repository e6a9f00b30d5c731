package main

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
	"github.com/xabridge/xabridge/postgres"

	_ "github.com/go-sql-driver/mysql"
	mysqladapter "github.com/xabridge/xabridge/mysql"
)

// A branch of ours prepared in another database of the same PostgreSQL
// server (list --all shows it) is not "unknown": show and resolve say
// where it is and what to do, exit 1, and leave it prepared.
func TestBranchInAnotherDatabase(t *testing.T) {
	ctx := context.Background()
	pgURL := dbtest.PG(t)
	admin, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+mistakeDB); err != nil && !strings.Contains(err.Error(), "42P04") {
		t.Fatal(err)
	}
	otherURL := dbtest.WithDatabase(t, pgURL, mistakeDB)
	pool, err := postgres.NewPool(ctx, otherURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	table := "xab_cli_elsewhere_" + randHex(3)
	if _, err := pool.Exec(ctx, "CREATE TABLE "+table+" (id int)"); err != nil {
		t.Fatal(err)
	}
	defer pool.Exec(context.WithoutCancel(ctx), "DROP TABLE "+table) //nolint:errcheck
	other := postgres.New("pg", pool)
	node := "cli-" + randHex(3)
	now := time.Now()
	g := strand.GlobalID(node, now.Add(-2*time.Hour), now.Add(-time.Hour), 1)
	x := drivers.XID{Global: g, Branch: 0}
	if err := strand.Prepare(ctx, other, x, "INSERT INTO "+table+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	defer other.RollbackPrepared(context.WithoutCancel(ctx), x) //nolint:errcheck
	logDir := newLogDir(t)
	flags := []string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + pgURL}
	const want = "is prepared in database " + mistakeDB + ", not in this resource's database"
	for _, args := range [][]string{
		{"show", g.String()}, {"show", g.String(), "-o", "json"},
		{"resolve", g.String(), "--rollback"}, {"resolve", g.String(), "--commit"}, {"resolve", g.String(), "--commit", "--force"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out, errOut, code := cli(t, append(args, flags...)...)
			if code != exitError {
				t.Errorf("exit %d, want %d\n%s%s", code, exitError, out, errOut)
			}
			for _, w := range []string{want, "point the resource's URL at database " + mistakeDB} {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr does not say %q:\n%s", w, errOut)
				}
			}
			if strings.Contains(out+errOut, "unknown global transaction") {
				t.Errorf("answered unknown:\n%s%s", out, errOut)
			}
			// Nothing changed: still prepared there, nothing logged.
			ps, err := other.Recover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range ps {
				found = found || p.Ours && p.XID == x
			}
			if !found {
				t.Fatal("the branch is no longer prepared")
			}
			if st := (&scene{logDir: logDir}).logState(t, g); st.String() != "none" {
				t.Errorf("the log says %s, want nothing", st)
			}
		})
	}
	// list --all shows it, with the same reason in JSON.
	out, _, _ := cli(t, append([]string{"list", "--all", "-o", "json"}, flags...)...)
	if !strings.Contains(out, x.GID()) || !strings.Contains(out, "point the resource's URL at database "+mistakeDB) {
		t.Errorf("list --all -o json does not show the branch and why:\n%s", out)
	}
}

// Tables show whole ids: a MySQL XID of 64-byte gtrid and bqual (280
// characters as X'…',X'…',fmt) is not cut, so an operator can copy it.
func TestListShowsWholeXIDs(t *testing.T) {
	ctx := context.Background()
	myURL := dbtest.MySQL(t)
	cfg, err := mysqladapter.ParseURL(myURL)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() }) // after the rollback below
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gtrid, bqual := []byte(strings.Repeat("g", 56)+randHex(4)), []byte(strings.Repeat("b", 56)+randHex(4))
	xid := "X'" + hex.EncodeToString(gtrid) + "',X'" + hex.EncodeToString(bqual) + "',7"
	for _, q := range []string{"XA START " + xid, "XA END " + xid, "XA PREPARE " + xid} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	_ = conn.Close()
	t.Cleanup(func() {
		// A MariaDB branch is busy (1399) until its preparing session is
		// gone; an empty one may answer XA_RBROLLBACK (1402) and still be
		// listed for a moment. Done when XA RECOVER no longer lists it.
		ctx := context.Background()
		for i := 0; i < 100; i++ {
			_, _ = db.ExecContext(ctx, "XA ROLLBACK "+xid)
			rows, err := db.QueryContext(ctx, "XA RECOVER")
			if err != nil {
				t.Error(err)
				return
			}
			listed := false
			for rows.Next() {
				var f, gl, bl int
				var data []byte
				if err := rows.Scan(&f, &gl, &bl, &data); err == nil && strings.Contains(string(data), string(gtrid)) {
					listed = true
				}
			}
			_ = rows.Close()
			if !listed {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("the test's XA branch %s is still prepared", xid)
	})
	out, errOut, _ := cli(t, "list", "--all", "--node-id", "cli-"+randHex(3), "--log-dir", newLogDir(t), "--resource", "mysql="+myURL)
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, hex.EncodeToString(gtrid[50:])) {
			line = l
		}
	}
	if line == "" || !strings.Contains(line, xid) || strings.Contains(line, "…") {
		t.Fatalf("the table does not show the whole XID %s:\n%s%s", xid, out, errOut)
	}
}

// demo transfer against a PostgreSQL without max_prepared_transactions:
// every transfer aborts. It exits 1, counts the aborts by reason with an
// example error, and the invariants still hold.
func TestDemoTransferFailsWhenNothingCommits(t *testing.T) {
	pg, my := doctorNo2PCURL(t), dbtest.MySQL(t)
	prefix := "xab_no2pc_" + randHex(3)
	t.Cleanup(func() {
		b, err := bank.Open(context.Background(), pg, my, 2)
		if err == nil {
			_ = b.SetPrefix(prefix)
			_ = b.Drop(context.Background())
			b.Close()
		}
	})
	out, errOut, code := cli(t, "demo", "transfer", "--pg", pg, "--mysql", my, "--count", "12", "--concurrency", "2",
		"--table-prefix", prefix, "--log-dir", t.TempDir(), "--node-id", "no2pc-"+randHex(2))
	if code != exitError {
		t.Errorf("exit %d, want %d\n%s%s", code, exitError, out, errOut)
	}
	for _, want := range []string{"committed      0", "aborted", "prepare-refused, e.g. ", "max_prepared_transactions", "ok: conserved", "ok: atomic"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout does not say %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "no transfer committed: all 12 of 12") {
		t.Errorf("stderr does not say why it failed:\n%s", errOut)
	}
	if n := strings.Count(strings.TrimSpace(errOut), "\n"); n > 0 && !strings.Contains(errOut, "level=WARN") {
		t.Errorf("the error spans %d lines:\n%s", n+1, errOut)
	}
}

// One resource down counts once, although recovery could read neither its
// decision table nor its branches; the error is one line.
func TestOneResourceDownCountsOnce(t *testing.T) {
	down := "postgres://u@127.0.0.1:1/db?connect_timeout=2"
	logDir := newLogDir(t)
	g := strand.GlobalID("cnt-"+randHex(2), time.Now().Add(-time.Hour), time.Now().Add(-time.Minute), 1)
	for _, args := range [][]string{
		{"list"}, {"recover", "--dry-run"}, {"show", g.String()},
	} {
		t.Run(args[0], func(t *testing.T) {
			all := append(args, "--node-id", g.Node(), "--log-dir", logDir, "--resource", "pg="+down, "--resource", "mysql="+dbtest.MySQL(t), "--decision-resource", "pg")
			out, errOut, code := cli(t, all...)
			if code != exitError {
				t.Errorf("exit %d, want %d\n%s%s", code, exitError, out, errOut)
			}
			if !strings.Contains(errOut, "resource pg could not be scanned") || strings.Contains(errOut, "2 resource") {
				t.Errorf("stderr miscounts the resources that could not be scanned:\n%s", errOut)
			}
			if n := strings.Count(strings.TrimSpace(errOut), "\n"); n > 0 {
				t.Errorf("the error spans %d lines:\n%s", n+1, errOut)
			}
		})
	}
}

// A decision log that is not the node's own (another node's, an empty or
// zero-filled file) is refused by recover and resolve against the real
// servers: exit 1, the branches still prepared, the node's decision still
// pending, the wrong file not written to.
func TestWrongDecisionLogRefused(t *testing.T) {
	s := newScene(t)
	ctx := context.Background()
	beta := t.TempDir()
	bl, err := decisionlog.OpenFileLog(beta, decisionlog.FileLogOptions{Node: "beta-" + randHex(2)})
	if err != nil {
		t.Fatal(err)
	}
	if err := bl.Close(); err != nil {
		t.Fatal(err)
	}
	empty, zeroed := t.TempDir(), t.TempDir()
	for dir, body := range map[string][]byte{empty: nil, zeroed: make([]byte, 4096)} {
		if err := os.WriteFile(filepath.Join(dir, "xabridge.log"), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	committed := s.gids["committed"].String()
	tests := []struct {
		name, dir, want string
	}{
		{"recover with another node's log", beta, "belongs to another node"},
		{"resolve --rollback with another node's log", beta, "belongs to another node"},
		{"recover with an empty log file", empty, "no decision log"},
		{"resolve --rollback with a zero-filled log file", zeroed, "no decision log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshotDir(t, tt.dir)
			args := []string{"--node-id", s.node, "--log-dir", tt.dir, "--resource", "pg=" + s.pgURL, "--resource", "mysql=" + s.myURL, "recover", "--min-age", "0s"}
			if strings.HasPrefix(tt.name, "resolve") {
				args = append(args[:len(args)-3], "resolve", committed, "--rollback")
			}
			out, errOut, code := cli(t, args...)
			if code != exitError || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, want %d naming %q\n%s%s", code, exitError, tt.want, out, errOut)
			}
			if after := snapshotDir(t, tt.dir); after != before {
				t.Errorf("the wrong log was written to: %s, was %s", after, before)
			}
			for _, r := range []drivers.Resource{s.b.PG, s.b.My} {
				ps, err := r.Recover(ctx)
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, p := range ps {
					found = found || p.Ours && p.XID.Global == s.gids["committed"]
				}
				if !found {
					t.Fatalf("the committed transaction's branch on %s is no longer prepared", r.Name())
				}
			}
			if st := s.logState(t, s.gids["committed"]); st != decisionlog.StateCommitted {
				t.Fatalf("the node's decision is %s, want committed (pending)", st)
			}
		})
	}
}

// snapshotDir describes a directory's files and sizes (but the lock file,
// which opening any log takes).
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range es {
		if e.Name() == "lock" {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%d ", e.Name(), fi.Size())
	}
	return b.String()
}
