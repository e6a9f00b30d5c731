package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/mysql"
)

// doctorCLI runs the CLI in-process and returns stdout, stderr and the exit
// code.
func doctorCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return out.String(), errb.String(), code
}

// doctorNo2PCURL starts (once; scripts/devdb is idempotent and serialised
// by a lock) the throwaway PostgreSQL with max_prepared_transactions = 0
// that the postgres package's tests use too, and returns its URL. It is
// left running, like the main servers.
func doctorNo2PCURL(t *testing.T) string {
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
	var out bytes.Buffer
	up := exec.CommandContext(t.Context(), script, "up")
	up.Env, up.Stdout, up.Stderr = env, &out, &out
	if err := up.Run(); err != nil {
		t.Fatalf("%s up: %v\n%s", script, err, out.String())
	}
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

// doctorMySQLDB creates a database of the test's own on the shared MySQL
// server, runs setup statements in it, and returns its URL. It is dropped
// at the end of the test.
func doctorMySQLDB(t *testing.T, setup ...string) string {
	t.Helper()
	base := dbtest.MySQL(t)
	cfg, err := mysql.ParseURL(base)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("xab_cli_doctor_%08x", rand.Uint32())
	cfg.DBName = ""
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	ctx := t.Context()
	for _, q := range append([]string{"CREATE DATABASE " + name}, setup...) {
		if _, err := admin.ExecContext(ctx, strings.ReplaceAll(q, "$DB", name)); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		if _, err := admin.ExecContext(context.Background(), "DROP DATABASE "+name); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// withPassword returns rawURL with its user's password set to pw.
func withPassword(t *testing.T, rawURL, pw string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String()
}

// parseDoctorTable splits table output into rows of five cells, using the
// header's column positions (tabwriter aligns by rune count), and returns
// the summary line after the table.
func parseDoctorTable(t *testing.T, out string) (rows [][]string, summary string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) < 3 {
		t.Fatalf("table too short:\n%s", out)
	}
	var starts []int
	for _, col := range []string{"RESOURCE", "CHECK", "STATUS", "DETAIL", "FIX"} {
		i := strings.Index(lines[0], col)
		if i < 0 {
			t.Fatalf("header %q lacks %s", lines[0], col)
		}
		starts = append(starts, len([]rune(lines[0][:i])))
	}
	for _, l := range lines[1 : len(lines)-1] {
		r := []rune(l)
		var cells []string
		for i, s := range starts {
			end := len(r)
			if i+1 < len(starts) {
				end = starts[i+1]
			}
			if s > len(r) || end > len(r) {
				t.Fatalf("row %q is shorter than the header", l)
			}
			cells = append(cells, strings.TrimSpace(string(r[s:end])))
		}
		rows = append(rows, cells)
	}
	return rows, lines[len(lines)-1]
}

// normalizeDoctor replaces what varies between runs and machines: server
// versions, measured clock offsets, and the max_connections a fix quotes.
func normalizeDoctor(s string) string {
	for _, r := range []struct{ re, repl string }{
		{`^PostgreSQL .*`, "PostgreSQL <VERSION>"},
		{`^(MariaDB|MySQL) \S+:`, "$1 <VERSION>:"},
		{`server clock \S+ (ahead of|behind) this host \(±\S+\)`, "server clock <OFFSET> this host (±<UNCERTAINTY>)"},
		{`max_prepared_transactions = \d+ \(at least`, "max_prepared_transactions = <N> (at least"},
	} {
		s = regexp.MustCompile(r.re).ReplaceAllString(s, r.repl)
	}
	return s
}

// A server without prepared transactions and a server that is down: the
// table has one row per check, the down server is one fail row without
// its password, and the exit code is 1.
func TestDoctorTable(t *testing.T) {
	secret := fmt.Sprintf("pw-%08x", rand.Uint32())
	out, errOut, code := doctorCLI(t, "doctor",
		"--resource", "pg0="+doctorNo2PCURL(t),
		"--resource", "down=mysql://root:"+secret+"@127.0.0.1:1/xabridge")
	if code != exitError || errOut != "xabridge: 2 check(s) failed\n" {
		t.Errorf("exit %d, stderr %q; want 1 and the failed-check count", code, errOut)
	}
	if strings.Contains(out+errOut, secret) {
		t.Fatalf("the password is in the output:\n%s%s", out, errOut)
	}
	rows, summary := parseDoctorTable(t, out)
	const downURL = "mysql://root:xxxxx@127.0.0.1:1/xabridge"
	want := [][]string{
		{"pg0", "version", "ok", "PostgreSQL <VERSION>", "-"},
		{"pg0", "max_prepared_transactions", "fail", "max_prepared_transactions = 0: prepared transactions are disabled, so PREPARE TRANSACTION fails and every global transaction with a branch here aborts",
			"set max_prepared_transactions = <N> (at least max_connections) in postgresql.conf and restart the server"},
		{"pg0", "role", "ok", "connected as postgres, a superuser, to database xabridge: it can finish any prepared transaction of this database", "-"},
		{"pg0", "prepared", "ok", "none prepared longer than 1h (0 prepared on the server, 0 of them xabridge's)", "-"},
		{"pg0", "clock", "ok", "server clock <OFFSET> this host (±<UNCERTAINTY>)", "-"},
		{"down", "connect", "fail", "cannot connect: mysql: resource down (" + downURL + "): dial tcp 127.0.0.1:1: connect: connection refused",
			"check that the server is running and the URL (" + downURL + ") is right"},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d:\n%s", len(rows), len(want), out)
	}
	for i, r := range rows {
		for j := range r {
			if got := normalizeDoctor(r[j]); got != want[i][j] {
				t.Errorf("row %d column %d:\n got %q\nwant %q", i, j, got, want[i][j])
			}
		}
	}
	if summary != "4 ok, 0 warn, 2 fail" {
		t.Errorf("summary %q", summary)
	}
}

// JSON output on the shared servers, with a warning planted (a MyISAM
// table in the MySQL resource's own database): every check is reported,
// the summary counts them, and warnings alone exit 0.
func TestDoctorJSON(t *testing.T) {
	myURL := doctorMySQLDB(t, "CREATE TABLE $DB.legacy (id INT PRIMARY KEY) ENGINE=MyISAM")
	out, errOut, code := doctorCLI(t, "doctor", "-o", "json", "--max-prepared-age", "24h",
		"--resource", "pg="+dbtest.PG(t), "--resource", "my="+myURL)
	var doc struct {
		Checks []struct {
			Resource, Check, Status, Detail, Fix string
		}
		Summary map[string]int
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("output is not the doctor JSON document: %v\n%s", err, out)
	}
	counts := map[string]int{}
	var names []string
	for _, c := range doc.Checks {
		counts[c.Status]++
		names = append(names, c.Resource+"/"+c.Check)
		if c.Status != "ok" && c.Status != "warn" {
			t.Errorf("%s %s: %s %q (the shared servers are ready for 2PC)", c.Resource, c.Check, c.Status, c.Detail)
		}
		if (c.Status == "ok") != (c.Fix == "") {
			t.Errorf("%s %s: status %s with fix %q", c.Resource, c.Check, c.Status, c.Fix)
		}
		if c.Resource == "my" && c.Check == "storage_engine" &&
			(c.Status != "warn" || !strings.Contains(c.Detail, "legacy (MyISAM)")) {
			t.Errorf("the MyISAM table is not reported: %+v", c)
		}
		if c.Resource == "pg" && c.Check == "prepared" && !strings.Contains(c.Detail, "longer than 24h") {
			t.Errorf("--max-prepared-age not applied: %+v", c)
		}
	}
	got := regexp.MustCompile(`my/xa_detach_on_prepare,`).ReplaceAllString(strings.Join(names, ","), "") // MySQL 8.0.29+ only
	if want := "pg/version,pg/max_prepared_transactions,pg/role,pg/prepared,pg/clock," +
		"my/version,my/binlog,my/storage_engine,my/isolation,my/xa_recover,my/prepared,my/clock"; got != want {
		t.Errorf("checks\n %s\nwant\n %s", got, want)
	}
	if len(doc.Summary) != 3 || doc.Summary["ok"] != counts["ok"] || doc.Summary["warn"] != counts["warn"] || doc.Summary["fail"] != 0 {
		t.Errorf("summary %v, counted %v", doc.Summary, counts)
	}
	if code != exitOK || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 0 with only warnings", code, errOut)
	}
}

// Passwords never appear, whether the server refuses them or cannot be
// reached at all; either way the resource is one fail row and the exit code
// is 1.
func TestDoctorJSONPasswords(t *testing.T) {
	secret := fmt.Sprintf("pw-%08x", rand.Uint32())
	out, errOut, code := doctorCLI(t, "doctor", "-o", "json",
		"--resource", "my="+withPassword(t, dbtest.MySQL(t), secret),
		"--resource", "pgdown=postgres://app:"+secret+"@127.0.0.1:1/xabridge?sslmode=disable")
	if strings.Contains(out+errOut, secret) {
		t.Fatalf("the password is in the output:\n%s%s", out, errOut)
	}
	var doc doctorJSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	want := map[string]string{"my": "Access denied", "pgdown": "connection refused"}
	if len(doc.Checks) != 2 {
		t.Fatalf("want one row per resource, got %+v", doc.Checks)
	}
	for _, c := range doc.Checks {
		if c.Check != "connect" || c.Status != "fail" || !strings.HasPrefix(c.Detail, "cannot connect: ") || !strings.Contains(c.Detail, want[c.Resource]) {
			t.Errorf("%+v: want a failed connect check mentioning %q", c, want[c.Resource])
		}
	}
	if code != exitError || doc.Summary["fail"] != 2 {
		t.Errorf("exit %d, summary %v; want 1 and 2 failures", code, doc.Summary)
	}
}

func TestDoctorUsageErrors(t *testing.T) {
	t.Setenv("XABRIDGE_PG", "")
	t.Setenv("XABRIDGE_MYSQL", "")
	t.Setenv("XABRIDGE_RESOURCES", "")
	t.Setenv("XABRIDGE_CONFIG", "")
	res := "pg=postgres://postgres@127.0.0.1:1/x"
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"doctor", "--resource", res, "--max-prepared-age", "0s"}, "--max-prepared-age must be positive"},
		{[]string{"doctor", "--resource", res, "--max-prepared-age", "soon"}, "invalid argument"},
		{[]string{"doctor", "--resource", res, "--timeout", "-1s"}, "--timeout must be positive"},
		{[]string{"doctor", "--resource", res, "-o", "yaml"}, "--output must be table or json"},
		{[]string{"doctor", "--resource", res, "extra"}, "takes no arguments"},
		{[]string{"doctor"}, "no resources"},
	}
	for _, tt := range tests {
		out, errOut, code := doctorCLI(t, tt.args...)
		if code != exitUsage || !strings.Contains(errOut, tt.msg) || out != "" {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want 2 with %q", tt.args, code, errOut, out, tt.msg)
		}
	}
}

func TestDoctorHelp(t *testing.T) {
	out, _, code := doctorCLI(t, "doctor", "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"RESOURCE CHECK STATUS DETAIL FIX", "max_prepared_transactions", "XA_RECOVER_ADMIN", "--max-prepared-age", "Exit code 1 when any check fails"} {
		if !strings.Contains(out, want) {
			t.Errorf("help does not mention %q", want)
		}
	}
	if strings.Contains(out, "--node-id") || strings.Contains(out, "--log-dir") {
		t.Errorf("help offers flags doctor ignores:\n%s", out)
	}
}

// A server that accepts connections but never answers is cut off by
// --timeout: one fail row per resource, in bounded time.
func TestDoctorTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() { // accepts and stays silent until the test ends
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	addr := ln.Addr().String()
	start := time.Now()
	out, _, code := doctorCLI(t, "doctor", "-o", "json", "--timeout", "500ms",
		"--resource", "mute-my=mysql://root@"+addr+"/x", "--resource", "mute-pg=postgres://u@"+addr+"/x?sslmode=disable")
	elapsed := time.Since(start)
	var doc doctorJSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if code != exitError || len(doc.Checks) != 2 {
		t.Fatalf("exit %d, checks %+v; want 1 and one row per resource", code, doc.Checks)
	}
	for _, c := range doc.Checks {
		if c.Check != "connect" || c.Status != "fail" || !strings.HasPrefix(c.Detail, "cannot connect: ") ||
			!strings.HasSuffix(c.Detail, "(--timeout 500ms ran out)") {
			t.Errorf("%+v: want a failed connect check that names the timeout", c)
		}
	}
	if elapsed > 10*time.Second {
		t.Errorf("doctor took %v with --timeout 500ms", elapsed)
	}
}
