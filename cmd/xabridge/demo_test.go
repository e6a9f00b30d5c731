package main

import (
	"context"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// The demo's performance options run the same transfers with their
// invariants intact: a group-commit delay, and the decision kept in
// PostgreSQL or in MariaDB (the decision log then holds no record).
func TestDemoTransferOptions(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	tests := []struct {
		name   string
		args   []string
		wantIn string // a line of the output
	}{
		{"decision log with a commit delay", []string{"--commit-delay", "2ms"}, "atomic (two-phase commit)  committed"},
		{"decision kept in postgres", []string{"--decision-resource", "pg"}, "atomic (decision in pg)    committed"},
		{"decision kept in mariadb", []string{"--decision-resource", "mysql"}, "atomic (decision in mysql) committed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix, node := "xab_do_"+randHex(3), "do-"+randHex(3)
			t.Cleanup(func() {
				b, err := bank.Open(context.Background(), pg, my, 2)
				if err == nil {
					_ = b.SetPrefix(prefix)
					_ = b.Drop(context.Background())
					b.Close()
				}
			})
			args := append([]string{"demo", "transfer", "--pg", pg, "--mysql", my, "--count", "200", "--concurrency", "4",
				"--table-prefix", prefix, "--node-id", node, "--log-dir", t.TempDir()}, tt.args...)
			out, errOut, code := cli(t, args...)
			if code != exitOK {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			wants := []string{tt.wantIn, "ok: conserved", "0 in only one  ok: atomic", "in doubt 0"}
			if strings.Contains(tt.name, "kept") {
				wants = append(wants, "for 0 records")
			}
			for _, want := range wants {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if errOut != "" {
				t.Errorf("stderr: %s", errOut)
			}
		})
	}
}
