package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/internal/bank"
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

// A short run of every mode against the real servers: each commits
// transfers, the invariants hold, the file-log modes fsync and the
// decision-in-participant modes do not, and the ratios are to baseline.
func TestBenchRunsEveryModeAndChecksInvariants(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	prefix := fmt.Sprintf("xab_bench_t%08x", rand.Uint32())
	t.Cleanup(func() {
		b, err := bank.Open(context.Background(), pg, my, 2)
		if err != nil {
			t.Error(err)
			return
		}
		defer b.Close()
		if err := b.SetPrefix(prefix); err == nil {
			_ = b.Drop(context.Background())
		}
	})
	out, stderr, code := runBenchCLI(t, "--pg", pg, "--mysql", my, "--table-prefix", prefix,
		"--log-dir", filepath.Join(t.TempDir(), "logs"), "--node-id", fmt.Sprintf("bt%06x", rand.Uint32()%0xffffff),
		"--clients", "2", "--duration", "400ms", "--rounds", "2", "--warmup", "100ms", "--progress=false", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rep.Results) != len(benchModes) {
		t.Fatalf("%d results, want one per mode (%d)", len(rep.Results), len(benchModes))
	}
	for i, r := range rep.Results {
		m := benchModes[i]
		if r.Mode != m.Name || r.Clients != 2 || r.Seconds != 0.4 {
			t.Errorf("result %d is %s at %d clients over %vs, want %s at 2 over 0.4s", i, r.Mode, r.Clients, r.Seconds, m.Name)
		}
		if r.Committed == 0 || r.TPS <= 0 || r.P50ms <= 0 || r.P99ms < r.P50ms || r.Maxms < r.P99ms {
			t.Errorf("%s: implausible numbers %+v", r.Mode, r)
		}
		if r.Aborted != 0 || r.InDoubt != 0 {
			t.Errorf("%s: %d aborted, %d in doubt: %v", r.Mode, r.Aborted, r.InDoubt, r.Errors)
		}
		switch {
		case m.Name == "baseline":
			if r.RatioTPS != 1 || r.LogFsyncs != 0 {
				t.Errorf("baseline: ratio %v, fsyncs %d", r.RatioTPS, r.LogFsyncs)
			}
		case m.keeper != "":
			if r.LogFsyncs != 0 {
				t.Errorf("%s: %d log fsyncs; the decision is in the %s participant", r.Mode, r.LogFsyncs, m.keeper)
			}
		default:
			if r.LogFsyncs == 0 {
				t.Errorf("%s: no log fsyncs; decisions must be durable in the log", r.Mode)
			}
		}
		if m.Name != "baseline" && r.RatioTPS != r.TPS/rep.Results[0].TPS {
			t.Errorf("%s: ratio %v, want tx/s over baseline's", r.Mode, r.RatioTPS)
		}
	}
	inv := rep.Invariants
	if !inv.OK || inv.MoneyAfter != inv.MoneyBefore || inv.PGTransfers != inv.MyTransfers || len(inv.PreparedLeft) != 0 || inv.DecisionRowsLeft != 0 {
		t.Fatalf("invariants: %+v", inv)
	}
}
