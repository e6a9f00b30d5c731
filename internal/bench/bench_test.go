package bench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
)

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
	var stderr bytes.Buffer
	rep, err := Run(context.Background(), &stderr, Options{PGURL: pg, MyURL: my, Prefix: prefix,
		LogDir: filepath.Join(t.TempDir(), "logs"), NodeID: fmt.Sprintf("bt%06x", rand.Uint32()%0xffffff),
		Clients: []int{2}, Modes: ModeNames(), Duration: 400 * time.Millisecond, Rounds: 2, Warmup: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("%v\nstderr: %s", err, stderr.String())
	}
	if len(rep.Results) != len(modes) {
		t.Fatalf("%d results, want one per mode (%d)", len(rep.Results), len(modes))
	}
	for i, r := range rep.Results {
		m := modes[i]
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

func TestValidate(t *testing.T) {
	good := func() Options {
		return Options{PGURL: "postgres://u@h/db", MyURL: "mysql://u@h/db", Prefix: "xab_bench", NodeID: "bench",
			Clients: []int{1, 8}, Modes: ModeNames(), Duration: time.Second, Rounds: 5}
	}
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"valid", func(*Options) {}, ""},
		{"no urls", func(o *Options) { o.MyURL = "" }, "both --pg and --mysql are needed"},
		{"unknown mode", func(o *Options) { o.Modes = []string{"xa", "turbo"} }, `unknown mode "turbo"`},
		{"too many clients", func(o *Options) { o.Clients = []int{MaxClients + 1} }, "is not between 1 and"},
		{"commit delay", func(o *Options) { o.CommitDelay = 2 * time.Second }, "--commit-delay must be between"},
		{"prefix", func(o *Options) { o.Prefix = "Bad" }, `--table-prefix: bank: bad table prefix "Bad"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good()
			tt.change(&o)
			err := o.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// The report records the command line without the passwords in it, in
// both output formats.
func TestReportMasksPasswords(t *testing.T) {
	o := Options{Duration: time.Second, Rounds: 1, Command: []string{"xabridge", "bench",
		"--pg", "postgres://u:hunter2@h/db", "--mysql=mysql://u:hunter2@h/db?password=hunter2"}}
	rep := newReport(&o)
	var js, tab bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	rep.WriteTable(&tab)
	if !strings.Contains(js.String(), `"command": "xabridge bench --pg postgres://u:xxxxx@h/db --mysql=mysql://u:xxxxx@h/db?password=xxxxx"`) {
		t.Errorf("JSON command line:\n%s", js.String())
	}
	if s := js.String() + tab.String(); strings.Contains(s, "hunter2") {
		t.Errorf("the report shows a password:\n%s", s)
	}
}
