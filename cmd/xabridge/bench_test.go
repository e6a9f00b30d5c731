package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runBenchCLI(t, append(append([]string{}, urls...), tc.args...)...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d naming %q", code, stderr, exitUsage, tc.want)
			}
		})
	}
	_, stderr, code := runBenchCLI(t, "--pg", "", "--mysql", "")
	if code != exitUsage || !strings.Contains(stderr, "both --pg and --mysql are needed") {
		t.Fatalf("without URLs: exit %d, %q", code, stderr)
	}
}
