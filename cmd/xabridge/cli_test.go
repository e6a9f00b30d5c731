package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// cli runs the CLI in-process and returns stdout, stderr and the exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

// newLogDir returns a directory holding an empty decision log, as a
// coordinator's first start leaves it (the CLI never creates one).
func newLogDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.OpenFileLog(dir, decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// scene is a set of in-doubt branches on the real servers, one per class.
type scene struct {
	node, other string
	logDir      string
	table       string
	pgURL       string
	myURL       string
	pool        *pgxpool.Pool
	gids        map[string]drivers.GlobalID // by role
	foreignGID  string
	b           *bank.Bank
}

// newScene prepares, on the shared servers and in a table of its own:
//
//	committed: a branch on pg and on mysql, with a commit decision in the log
//	orphan:    a branch on pg, no decision, past its fence
//	live:      a branch on mysql, no decision, within its fence
//	other:     a branch on pg of another node
//	foreign:   a plain PREPARE TRANSACTION on pg
func newScene(t *testing.T) *scene {
	t.Helper()
	ctx := context.Background()
	s := &scene{
		node: "cli-" + randHex(3), other: "oth-" + randHex(3),
		logDir: t.TempDir(), pgURL: dbtest.PG(t), myURL: dbtest.MySQL(t),
		gids: map[string]drivers.GlobalID{},
	}
	b, err := bank.Open(ctx, s.pgURL, s.myURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	s.b = b
	if err := b.SetPrefix("xab_cli_" + randHex(3)); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 10, 100); err != nil {
		t.Fatal(err)
	}
	s.table = b.Table("accounts")
	s.pool = b.PGPool
	now := time.Now()
	s.gids["committed"] = strand.GlobalID(s.node, now.Add(-3*time.Second), now.Add(time.Minute), 1)
	s.gids["orphan"] = strand.GlobalID(s.node, now.Add(-2*time.Hour), now.Add(-time.Hour), 2)
	s.gids["live"] = strand.GlobalID(s.node, now.Add(-time.Second), now.Add(time.Hour), 3)
	s.gids["other"] = strand.GlobalID(s.other, now.Add(-time.Hour), now.Add(-time.Minute), 4)
	upd := func(id int) string {
		return fmt.Sprintf("UPDATE %s SET balance = balance + 1 WHERE id = %d", s.table, id)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	x := func(role string, br uint8) drivers.XID { return drivers.XID{Global: s.gids[role], Branch: br} }
	must(strand.Prepare(ctx, b.PG, x("committed", 0), upd(1)))
	must(strand.Prepare(ctx, b.My, x("committed", 1), upd(1)))
	must(strand.Prepare(ctx, b.PG, x("orphan", 0), upd(2)))
	must(strand.Prepare(ctx, b.My, x("live", 1), upd(3)))
	must(strand.Prepare(ctx, b.PG, x("other", 0), upd(4)))
	s.foreignGID = "cli-foreign-" + randHex(3)
	fc, err := pgx.Connect(ctx, s.pgURL)
	must(err)
	_, err = fc.Exec(ctx, "BEGIN; "+upd(5)+"; PREPARE TRANSACTION '"+s.foreignGID+"'")
	must(err)
	must(fc.Close(ctx)) // the session ends; the prepared transaction stays

	l, err := decisionlog.OpenFileLog(s.logDir, decisionlog.FileLogOptions{})
	must(err)
	pgID, err := b.PG.Identity(ctx)
	must(err)
	myID, err := b.My.Identity(ctx)
	must(err)
	must(l.Commit(ctx, decisionlog.Decision{GTRID: s.gids["committed"], Participants: []decisionlog.Participant{
		{Resource: "pg", Branch: 0, ID: pgID.String()}, {Resource: "mysql", Branch: 1, ID: myID.String()}}}))
	must(l.Close())

	t.Cleanup(func() {
		// Finish whatever the test left, then drop the tables.
		for _, role := range []string{"committed", "orphan", "live", "other"} {
			for br := uint8(0); br < 2; br++ {
				for _, r := range []drivers.Resource{b.PG, b.My} {
					// A MariaDB branch answers "busy" until its preparing
					// session has certainly gone; wait that out, bounded.
					for i := 0; i < 100; i++ {
						if err := r.RollbackPrepared(ctx, x(role, br)); !errors.Is(err, drivers.ErrBusy) {
							break
						}
						time.Sleep(50 * time.Millisecond)
					}
				}
			}
		}
		_, _ = s.pool.Exec(ctx, "ROLLBACK PREPARED '"+s.foreignGID+"'")
		_ = b.Drop(ctx)
		b.Close()
	})
	return s
}

// args returns the common flags for the scene's node, log and resources.
func (s *scene) args(extra ...string) []string {
	return append([]string{"--node-id", s.node, "--log-dir", s.logDir, "--resource", "pg=" + s.pgURL, "--resource", "mysql=" + s.myURL}, extra...)
}

// ids replaces the scene's global ids, node ids and times with placeholders.
func (s *scene) ids(out string) string {
	for role, g := range s.gids {
		out = strings.ReplaceAll(out, g.String(), "<"+role+">")
		out = strings.ReplaceAll(out, hex.EncodeToString([]byte(g.String())), "<"+role+"-hex>")
	}
	out = strings.ReplaceAll(out, s.foreignGID, "<foreign>")
	out = strings.ReplaceAll(out, s.node, "<node>")
	out = strings.ReplaceAll(out, s.other, "<other-node>")
	out = regexp.MustCompile(`\b(\d+(\.\d+)?(ms|h|m|s))+\b`).ReplaceAllString(out, "AGE")
	return regexp.MustCompile(`\d{4}-\d\d-\d\dT[0-9:.]+Z`).ReplaceAllString(out, "TIME")
}

// normalize applies ids and joins table columns with " | ", since column
// widths depend on the ids.
func (s *scene) normalize(out string) string {
	var lines []string
	for _, l := range strings.Split(s.ids(out), "\n") {
		lines = append(lines, strings.Join(regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1), " | "))
	}
	return strings.Join(lines, "\n")
}

// onlyScene keeps the table header and the rows of the scene's transactions
// (the shared servers may hold other tests' branches).
func (s *scene) onlyScene(out string) string {
	var kept []string
	for i, l := range strings.Split(out, "\n") {
		if i == 0 || strings.Contains(l, "<") || strings.HasPrefix(l, "ERROR") || strings.HasPrefix(l, "HEURISTIC") {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}

// filterJSON keeps the scene's branches in a JSON report.
func (s *scene) filterJSON(t *testing.T, out string) string {
	t.Helper()
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	var kept []any
	for _, b := range rep["branches"].([]any) {
		m := b.(map[string]any)
		id, _ := m["xid"].(string)
		g, _ := m["gtrid"].(string)
		keep := strings.Contains(id, s.foreignGID)
		for _, sg := range s.gids {
			keep = keep || g == sg.String()
		}
		if keep {
			m["age_seconds"] = "AGE"
			kept = append(kept, m)
		}
	}
	rep["branches"] = kept
	rep["remaining"] = "N"
	rep["at"] = "TIME"
	buf, _ := json.MarshalIndent(rep, "", "  ")
	return s.ids(string(buf))
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/xabridge -update to create it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs from %s (-want +got):\n%s", name, path, d)
	}
}

func TestListAndShow(t *testing.T) {
	s := newScene(t)
	out, errOut, code := cli(t, s.args("list")...)
	if code != exitInDoubt {
		t.Fatalf("list exit %d, want %d (in doubt)\n%s%s", code, exitInDoubt, out, errOut)
	}
	golden(t, "list", s.onlyScene(s.normalize(out)))

	out, _, code = cli(t, s.args("list", "--all", "-o", "json")...)
	if code != exitInDoubt {
		t.Fatalf("list --all -o json exit %d", code)
	}
	golden(t, "list-all-json", s.filterJSON(t, out))

	out, _, code = cli(t, s.args("show", s.gids["committed"].String())...)
	if code != exitInDoubt {
		t.Fatalf("show exit %d", code)
	}
	golden(t, "show", s.normalize(out))
}

func TestResolveRefusalsAndForce(t *testing.T) {
	s := newScene(t)
	orphan, committed := s.gids["orphan"].String(), s.gids["committed"].String()

	// Commit without a decision: refused, nothing changed.
	_, errOut, code := cli(t, s.args("resolve", orphan, "--commit")...)
	if code != exitError || !strings.Contains(errOut, "contradicts the decision log") {
		t.Fatalf("resolve --commit of an undecided transaction: exit %d, %q", code, errOut)
	}
	// Rollback after a commit decision: refused.
	_, errOut, code = cli(t, s.args("resolve", committed, "--rollback")...)
	if code != exitError || !strings.Contains(errOut, "contradicts the decision log") {
		t.Fatalf("resolve --rollback of a committed transaction: exit %d, %q", code, errOut)
	}
	if n := s.balance(t, 2); n != 100 {
		t.Fatalf("a refused resolve changed data: balance %d", n)
	}
	// Forced: done, and reported as heuristic.
	out, errOut, code := cli(t, s.args("resolve", orphan, "--commit", "--force")...)
	if code != exitOK || !strings.Contains(out, "HEURISTIC") {
		t.Fatalf("forced resolve: exit %d\n%s%s", code, out, errOut)
	}
	golden(t, "resolve-force", s.onlyScene(s.normalize(out)))
	if n := s.balance(t, 2); n != 101 {
		t.Fatalf("forced commit not applied: balance %d", n)
	}
	out, _, _ = cli(t, s.args("show", orphan, "-o", "json")...)
	if !strings.Contains(out, `"heuristic": true`) {
		t.Fatalf("show does not report the heuristic outcome:\n%s", out)
	}
	// Agreeing with the log needs no force.
	out, errOut, code = cli(t, s.args("resolve", committed, "--commit")...)
	if code != exitOK {
		t.Fatalf("resolve --commit of a committed transaction: exit %d\n%s%s", code, out, errOut)
	}
}

func (s *scene) balance(t *testing.T, id int) int64 {
	t.Helper()
	var v int64
	if err := s.pool.QueryRow(context.Background(), fmt.Sprintf("SELECT balance FROM %s WHERE id = %d", s.table, id)).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRecover(t *testing.T) {
	s := newScene(t)
	out, _, code := cli(t, s.args("recover", "--dry-run")...)
	if code != exitInDoubt {
		t.Fatalf("recover --dry-run exit %d\n%s", code, out)
	}
	golden(t, "recover-dry-run", s.onlyScene(s.normalize(out)))
	if n := s.balance(t, 2); n != 100 {
		t.Fatal("dry run changed data")
	}

	out, errOut, code := cli(t, s.args("recover")...)
	// The live branch and the other node's branch remain: exit 3.
	if code != exitInDoubt {
		t.Fatalf("recover exit %d\n%s%s", code, out, errOut)
	}
	golden(t, "recover", s.onlyScene(s.normalize(out)))
	if got := s.balance(t, 1); got != 101 {
		t.Errorf("committed transaction not committed by recover: balance %d", got)
	}
	if got := s.balance(t, 2); got != 100 {
		t.Errorf("orphan not rolled back by recover: balance %d", got)
	}
	// Untouched: the live branch, the other node's, the foreign one.
	out, _, _ = cli(t, s.args("list", "--all")...)
	norm := s.normalize(out)
	for _, want := range []string{"<live>", "<other>", "<foreign>"} {
		if !strings.Contains(norm, want) {
			t.Errorf("recover touched %s:\n%s", want, norm)
		}
	}
	for _, gone := range []string{"<committed>", "<orphan>"} {
		if strings.Contains(norm, gone) {
			t.Errorf("%s still listed after recover:\n%s", gone, norm)
		}
	}
	// A second recover finds the same two left, changes nothing.
	if _, _, code := cli(t, s.args("recover")...); code != exitInDoubt {
		t.Errorf("second recover exit %d", code)
	}
}

func TestBadInput(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	logDir := newLogDir(t)
	locked := t.TempDir()
	l, err := decisionlog.OpenFileLog(locked, decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	withPassword := strings.Replace(my, "mysql://root@", "mysql://root:s3cretpw@", 1)
	twoDocs, dupKey := filepath.Join(locked, "two.json"), filepath.Join(locked, "dup.json")
	for p, body := range map[string]string{twoDocs: `{"log_dir": "` + logDir + `"} {}`, dupKey: `{"log_dir": "` + logDir + `", "log_dir": "/elsewhere"}`} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := []string{"--node-id", "bad", "--log-dir", logDir, "--resource", "pg=" + pg}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown gtrid", append(base, "resolve", "bad.019e7044887b.deadbeef.019e7044fdab", "--commit"), exitError, "unknown global transaction"},
		{"hostile gtrid", append(base, "show", "x'; DROP TABLE t; --"), exitUsage, "is not a xabridge global id"},
		{"neither commit nor rollback", append(base, "resolve", "bad.019e7044887b.deadbeef.019e7044fdab"), exitUsage, "exactly one of --commit or --rollback"},
		{"malformed URL", []string{"--log-dir", logDir, "--resource", "pg=postgres://u:s3cretpw@[::1", "list"}, exitError, "postgres"},
		{"not a URL", []string{"--log-dir", logDir, "--resource", "pg=s3cretpw", "list"}, exitError, "not a URL"},
		{"unknown scheme", []string{"--log-dir", logDir, "--resource", "x=oracle://u:s3cretpw@h/db", "list"}, exitError, "unknown scheme"},
		{"bad resource spec", []string{"--log-dir", logDir, "--resource", "nourl", "list"}, exitUsage, "want NAME=URL"},
		{"bad resource name", []string{"--log-dir", logDir, "--resource", "a b=" + pg, "list"}, exitUsage, "may only contain"},
		{"hostile node id", []string{"--node-id", "x'; drop", "--log-dir", logDir, "--resource", "pg=" + pg, "list"}, exitUsage, "node id"},
		{"wrong password", []string{"--log-dir", logDir, "--resource", "my=" + withPassword, "list"}, exitError, "Access denied"},
		{"unreachable server", []string{"--log-dir", logDir, "--resource", "pg=postgres://u:s3cretpw@127.0.0.1:1/db?connect_timeout=2", "list"}, exitError, "could not be scanned"},
		{"locked log", []string{"--log-dir", locked, "--resource", "pg=" + pg, "recover"}, exitError, "locked"},
		{"missing log for a read", []string{"--log-dir", filepath.Join(logDir, "nope"), "--resource", "pg=" + pg, "list"}, exitError, "no decision log"},
		{"missing log for recovery (never created)", []string{"--log-dir", filepath.Join(logDir, "typo"), "--resource", "pg=" + pg, "recover"}, exitError, "no decision log"},
		{"missing log for compaction", []string{"log", "compact", "--log-dir", filepath.Join(logDir, "typo2")}, exitError, "no decision log"},
		{"bad min-age", append(base, "recover", "--min-age", "yesterday"), exitUsage, "--min-age"},
		{"unknown flag", append(base, "list", "--frobnicate"), exitUsage, "unknown flag"},
		{"unknown command", []string{"frobnicate"}, exitUsage, "unknown command"},
		{"bad output format", append(base, "list", "-o", "yaml"), exitUsage, "--output"},
		{"unknown log subcommand", []string{"log", "nope"}, exitUsage, `unknown command "nope" for "xabridge log"`},
		{"unknown demo subcommand", []string{"demo", "nope"}, exitUsage, `unknown command "nope" for "xabridge demo"`},
		{"empty node id", []string{"--node-id", "", "--log-dir", logDir, "--resource", "pg=" + pg, "list"}, exitUsage, "--node-id is empty"},
		{"watch with dry-run", append(base, "recover", "--watch", "--dry-run"), exitUsage, "--dry-run"},
		{"empty log dir", []string{"--log-dir", "", "--resource", "pg=" + pg, "list"}, exitUsage, "--log-dir is empty"},
		{"endless config file", []string{"--config", "/dev/zero", "list"}, exitUsage, "larger than"},
		{"config file with two documents", []string{"--config", twoDocs, "list"}, exitUsage, "more than one JSON value"},
		{"config file with a duplicate key", []string{"--config", dupKey, "list"}, exitUsage, `key "log_dir" given twice`},
		{"decision resource not among the resources", append(base, "recover", "--decision-resource", "ledger"), exitUsage, `--decision-resource "ledger" is not one of the resources (pg)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := cli(t, tt.args...)
			all := out + errOut
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s", code, tt.code, all)
			}
			if !strings.Contains(all, tt.want) {
				t.Errorf("output does not mention %q:\n%s", tt.want, all)
			}
			if strings.Contains(all, "s3cretpw") {
				t.Errorf("output leaks the password:\n%s", all)
			}
			if n := strings.Count(strings.TrimSpace(errOut), "\n"); code != exitOK && code != exitInDoubt && n > 0 {
				t.Errorf("error is not short (%d lines):\n%s", n+1, errOut)
			}
		})
	}
	// Nothing was written to the log by any of them.
	rl, err := decisionlog.OpenFileLog(logDir, decisionlog.FileLogOptions{ReadOnly: true})
	if err == nil {
		defer rl.Close()
		if n := len(rl.Entries()); n != 0 {
			t.Errorf("bad input wrote %d log entries", n)
		}
	}
}

// mistakeDB is an empty database on the shared servers, for URLs that
// name the wrong database.
const mistakeDB = "xabridge_cli_mistake"

// TestOperatorMistakes: list, resolve and recover with a resource name
// pointed at the wrong database or engine, or a keeper URL naming a
// database without the decision table, are refused with a clear message
// and exit 1, and change nothing: the committed transaction's MySQL branch
// stays prepared and its decision pending (never ended on the wrong
// listing), and no decision table is created. A recover with the right
// URLs then finishes it.
func TestOperatorMistakes(t *testing.T) {
	s := newScene(t)
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, "CREATE DATABASE "+mistakeDB); err != nil && !strings.Contains(err.Error(), "42P04") {
		t.Fatal(err)
	}
	if _, err := s.b.MyDB.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+mistakeDB); err != nil {
		t.Fatal(err)
	}
	committed := s.gids["committed"].String()
	wrongMy, wrongPG := dbtest.WithDatabase(t, s.myURL, mistakeDB), dbtest.WithDatabase(t, s.pgURL, mistakeDB)
	flags := func(pg, my string, extra ...string) []string {
		return append([]string{"--node-id", s.node, "--log-dir", s.logDir, "--resource", "pg=" + pg, "--resource", "mysql=" + my}, extra...)
	}
	const wrongRes, noTable = "is --resource mysql pointing at the right server?", "no decision table xabridge_decisions in database \"" + mistakeDB + "\": is this the keeper's database?"
	tests := []struct {
		name string
		args []string
		want string
		// committedMy: recovery may commit the MySQL branch (named right,
		// with a durable decision): progress, not a change.
		committedMy bool
	}{
		{"mysql names another database: list", flags(s.pgURL, wrongMy, "list"), wrongRes, false},
		{"mysql names another database: resolve --commit", flags(s.pgURL, wrongMy, "resolve", committed, "--commit"), wrongRes, false},
		{"mysql names another database: resolve --rollback --force", flags(s.pgURL, wrongMy, "resolve", committed, "--rollback", "--force"), wrongRes, false},
		{"mysql names a PostgreSQL URL: resolve --commit", flags(s.pgURL, s.pgURL, "resolve", committed, "--commit"), "resource \"mysql\" is a postgres database but the decision names a mysql one", false},
		{"keeper URL names a database without the table: list", flags(wrongPG, s.myURL, "--decision-resource", "pg", "list"), noTable, false},
		{"mysql names another database: recover", flags(s.pgURL, wrongMy, "recover"), wrongRes, false},
		{"mysql names a PostgreSQL URL: recover", flags(s.pgURL, s.pgURL, "recover"), "is a postgres database but the decision names a mysql one", false},
		{"keeper URL names a database without the table: recover", flags(wrongPG, s.myURL, "--decision-resource", "pg", "recover", "--min-age", "0s"), noTable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := cli(t, tt.args...)
			if code != exitError {
				t.Errorf("exit %d, want %d\n%s%s", code, exitError, out, errOut)
			}
			if !strings.Contains(out+errOut, tt.want) {
				t.Errorf("output does not mention %q:\n%s%s", tt.want, out, errOut)
			}
			// Nothing changed: the MySQL branch is prepared, the decision
			// pending, no decision table where the keeper URL pointed.
			x := drivers.XID{Global: s.gids["committed"], Branch: 1}
			ps, err := s.b.My.Recover(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.committedMy && !slices.ContainsFunc(ps, func(p drivers.Prepared) bool { return p.Ours && p.XID == x }) {
				t.Fatal("the committed transaction's MySQL branch is no longer prepared")
			}
			l, err := decisionlog.OpenFileLog(s.logDir, decisionlog.FileLogOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			e, _ := l.Lookup(s.gids["committed"])
			_ = l.Close()
			if e.State != decisionlog.StateCommitted {
				t.Fatalf("decision state %s after the mistake, want committed (pending)", e.State)
			}
			wc, err := pgx.Connect(ctx, wrongPG)
			if err != nil {
				t.Fatal(err)
			}
			var created bool
			err = wc.QueryRow(ctx, "SELECT to_regclass('xabridge_decisions') IS NOT NULL").Scan(&created)
			_ = wc.Close(ctx)
			if err != nil || created {
				t.Fatalf("decision table in %s: %v, %v", mistakeDB, created, err)
			}
		})
	}
	// The right URLs finish it (the MariaDB branch may answer busy for a
	// pass while its preparing session is certainly gone).
	for i := 0; ; i++ {
		out, errOut, _ := cli(t, s.args("recover")...)
		if !strings.Contains(s.ids(out), "<committed>") || i == 100 {
			if e := s.logState(t, s.gids["committed"]); e != decisionlog.StateDone {
				t.Fatalf("after the right recover: decision %s, want done\n%s%s", e, out, errOut)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logState is what the scene's log says about g.
func (s *scene) logState(t *testing.T, g drivers.GlobalID) decisionlog.State {
	t.Helper()
	l, err := decisionlog.OpenFileLog(s.logDir, decisionlog.FileLogOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e, _ := l.Lookup(g)
	return e.State
}

func TestHelpMentionsEveryCommand(t *testing.T) {
	out, _, code := cli(t, "--help")
	if code != exitOK {
		t.Fatalf("--help exit %d", code)
	}
	var missing []string
	for _, c := range []string{"list", "show", "resolve", "recover", "doctor", "log", "demo", "version", "nodes"} {
		if !regexp.MustCompile(`(?m)^\s+` + c + `\s`).MatchString(out) {
			missing = append(missing, c)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("help does not list %v:\n%s", missing, out)
	}
}

// list is a stuck-transaction probe: on a busy, healthy service (branches
// prepared within their fence, undecided or in phase 2) it exits 0; one
// branch past its fence with no decision makes it exit 3.
func TestListCountsOnlyWhatNeedsAttention(t *testing.T) {
	ctx := context.Background()
	pgURL, myURL := dbtest.PG(t), dbtest.MySQL(t)
	b, err := bank.Open(ctx, pgURL, myURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix("xab_cli_" + randHex(3)); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 10, 100); err != nil {
		t.Fatal(err)
	}
	node, logDir := "busy-"+randHex(3), newLogDir(t)
	now := time.Now()
	inFlight := strand.GlobalID(node, now.Add(-time.Second), now.Add(time.Hour), 1) // phase 1 done, deciding
	deciding := strand.GlobalID(node, now.Add(-time.Second), now.Add(time.Hour), 2) // decided, in phase 2
	stuck := strand.GlobalID(node, now.Add(-2*time.Hour), now.Add(-time.Hour), 3)   // undecided, past its fence
	var xids []drivers.XID
	prepare := func(g drivers.GlobalID, r drivers.Resource, br uint8, id int) {
		t.Helper()
		x := drivers.XID{Global: g, Branch: br}
		if err := strand.Prepare(ctx, r, x, fmt.Sprintf("UPDATE %s SET balance = balance + 1 WHERE id = %d", b.Table("accounts"), id)); err != nil {
			t.Fatal(err)
		}
		xids = append(xids, x)
	}
	t.Cleanup(func() {
		for _, x := range xids {
			for _, r := range []drivers.Resource{b.PG, b.My} {
				for i := 0; i < 100; i++ { // a MariaDB branch is busy until its session is gone
					if err := r.RollbackPrepared(ctx, x); !errors.Is(err, drivers.ErrBusy) {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}
		_ = b.Drop(ctx)
		b.Close()
	})
	prepare(inFlight, b.PG, 0, 1)
	prepare(inFlight, b.My, 1, 1)
	prepare(deciding, b.PG, 0, 2)
	prepare(deciding, b.My, 1, 2)
	l, err := decisionlog.OpenFileLog(logDir, decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Commit(ctx, decisionlog.Decision{GTRID: deciding, Participants: []decisionlog.Participant{{Resource: "pg", Branch: 0}, {Resource: "mysql", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	args := func(extra ...string) []string {
		return append([]string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + pgURL, "--resource", "mysql=" + myURL, "list"}, extra...)
	}
	counts := func(out string) (attention, inFlight float64, attn map[string]bool) {
		t.Helper()
		var rep struct {
			Attention float64 `json:"needs_attention"`
			InFlight  float64 `json:"in_flight"`
			Branches  []struct {
				GTRID     string `json:"gtrid"`
				Attention bool   `json:"attention"`
			} `json:"branches"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		attn = map[string]bool{}
		for _, br := range rep.Branches {
			attn[br.GTRID] = attn[br.GTRID] || br.Attention
		}
		return rep.Attention, rep.InFlight, attn
	}

	out, errOut, code := cli(t, args()...)
	if code != exitOK || !strings.Contains(out, "0 branch(es) need attention; 4 in flight") ||
		!strings.Contains(out, inFlight.String()) || !strings.Contains(out, deciding.String()) {
		t.Fatalf("busy, healthy service: list exit %d, want 0, listing the branches in flight\n%s%s", code, out, errOut)
	}
	out, _, code = cli(t, args("--hide-live")...)
	if code != exitOK || strings.Contains(out, inFlight.String()) || strings.Contains(out, deciding.String()) || !strings.Contains(out, "4 in flight (hidden)") {
		t.Fatalf("list --hide-live: exit %d, want 0 and nothing of ours listed\n%s", code, out)
	}
	out, _, code = cli(t, args("-o", "json")...)
	if a, f, attn := counts(out); code != exitOK || a != 0 || f != 4 || attn[inFlight.String()] || attn[deciding.String()] {
		t.Fatalf("list -o json: exit %d, needs_attention %v, in_flight %v, attention %v\n%s", code, a, f, attn, out)
	}

	prepare(stuck, b.PG, 0, 3)
	out, errOut, code = cli(t, args()...)
	if code != exitInDoubt || !strings.Contains(out, "1 branch(es) need attention; 4 in flight") {
		t.Fatalf("a branch past its fence, undecided: list exit %d, want %d\n%s%s", code, exitInDoubt, out, errOut)
	}
	out, _, code = cli(t, args("--hide-live", "-o", "json")...)
	if a, f, attn := counts(out); code != exitInDoubt || a != 1 || f != 4 || !attn[stuck.String()] || len(attn) != 1 {
		t.Fatalf("list --hide-live -o json: exit %d, needs_attention %v, in_flight %v, branches %v\n%s", code, a, f, attn, out)
	}
}
