package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/internal/dbtest"
)

func runBenchCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"bench"}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

func TestBenchUsageErrors(t *testing.T) {
	urls := []string{"--pg", "postgres://u@127.0.0.1:1/db", "--mysql", "mysql://u@127.0.0.1:1/db"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown mode", []string{"--modes", "xa,turbo"}, `unknown mode "turbo"`},
		{"mode twice", []string{"--modes", "xa,xa"}, `"xa" is given twice`},
		{"no clients", []string{"--clients", "0"}, "--clients: 0 is not between 1 and"},
		{"bad output", []string{"-o", "xml"}, `--output must be table or json, not "xml"`},
		{"negative hot rows", []string{"--hot-rows", "-1"}, "--hot-rows must be >= 0"},
		{"zero duration", []string{"--duration", "0s"}, "--duration must be > 0"},
		{"rounds too short", []string{"--duration", "100ms", "--rounds", "5"}, "--duration / --rounds at least 50ms"},
		{"node id too long", []string{"--node-id", "a-very-long-node-prefix"}, `--node-id "a-very-long-node-prefix"`},
		{"bad table prefix", []string{"--table-prefix", "Bad-Name"}, `bad table prefix "Bad-Name"`},
		{"store not postgres", []string{"--store", "mysql://u:hunter2@h/db"}, "--store mysql://u:xxxxx@h/db: the shared decision store is a PostgreSQL database"},
		{"store unreadable", []string{"--store", "postgres://u:hunter2@h:port/db"}, "--store postgres://u:xxxxx@h:port/db: not a valid URL"},
		{"store ambiguous", []string{"--store", "postgres://u:12/hunter2@h/db"}, "--store postgres://u:xxxxx@h/db: percent-encode the password"},
		{"bad start-at", []string{"--start-at", "tomorrow"}, `--start-at "tomorrow": want a time like`},
		{"store not derivable", []string{"--pg", "host=h password=hunter2", "--modes", "xa-store"}, "cannot derive the store's database from --pg"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runBenchCLI(t, append(append([]string{}, urls...), tc.args...)...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d naming %q", code, stderr, exitUsage, tc.want)
			}
			if strings.Contains(stderr, "hunter2") {
				t.Fatalf("stderr shows the password: %q", stderr)
			}
		})
	}
	_, stderr, code := runBenchCLI(t, "--pg", "", "--mysql", "")
	if code != exitUsage || !strings.Contains(stderr, "both --pg and --mysql are needed") {
		t.Fatalf("without URLs: exit %d, %q", code, stderr)
	}
}

// A store that cannot be reached fails the run before any transfer, naming
// the store without its password; the participants' tables are untouched.
func TestBenchStoreUnreachableHidesPassword(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	stdout, stderr, code := runBenchCLI(t, "--pg", pg, "--mysql", my, "--modes", "xa-store", "--clients", "1",
		"--duration", "100ms", "--rounds", "1", "--table-prefix", "xab_bench_unreach", "--log-dir", t.TempDir(),
		"--store", "postgres://u:hunter2secret@127.0.0.1:1/nostore?connect_timeout=2")
	if code == 0 || !strings.Contains(stderr, "store database nostore on 127.0.0.1:1 (postgres://u:xxxxx@127.0.0.1:1/nostore") {
		t.Fatalf("exit %d, stderr %q; want a failure naming the store", code, stderr)
	}
	if strings.Contains(stdout+stderr, "hunter2secret") {
		t.Fatalf("the output shows the password: %q %q", stdout, stderr)
	}
}
