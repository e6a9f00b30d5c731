package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/redact"
)

// A short run of every mode against the real servers: each commits
// transfers, the invariants hold, the file-log modes fsync and the
// decision-in-participant modes do not, the store modes make round trips
// to the shared store (in the default database, PGDB_store, created if
// missing) and fsync nothing, and the ratios are to baseline.
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
		case m.store != "":
			if r.LogFsyncs != 0 || r.StoreRoundTrips == 0 || r.StoreRTTx <= 0 || r.StoreReqsBatch < 1 || r.StoreRTms <= 0 {
				t.Errorf("%s: %d log fsyncs, %d store round trips (%v per tx, %v requests each); want none and some",
					r.Mode, r.LogFsyncs, r.StoreRoundTrips, r.StoreRTTx, r.StoreReqsBatch)
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
		if m.store == "" && r.StoreRoundTrips != 0 {
			t.Errorf("%s: %d store round trips, and it has no store", r.Mode, r.StoreRoundTrips)
		}
		if m.Name != "baseline" && r.RatioTPS != r.TPS/rep.Results[0].TPS {
			t.Errorf("%s: ratio %v, want tx/s over baseline's", r.Mode, r.RatioTPS)
		}
	}
	inv := rep.Invariants
	if !inv.OK || inv.MoneyAfter != inv.MoneyBefore || inv.PGTransfers != inv.MyTransfers || len(inv.PreparedLeft) != 0 || inv.DecisionRowsLeft != 0 {
		t.Fatalf("invariants: %+v", inv)
	}
	if want, _ := DefaultStoreURL(pg); rep.Store != redact.URL(want) {
		t.Errorf("report's store %q, want the default %q", rep.Store, redact.URL(want))
	}
}

// The store modes with --store naming a database: here the participant's
// own, so that xa-store and xa-store-own share one database (and one
// store's tables) under two node ids. Both commit, conserve money and leave
// no prepared branch and no pending decision in the store.
func TestBenchStoreModesWithGivenStore(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	prefix := fmt.Sprintf("xab_bench_s%08x", rand.Uint32())
	t.Cleanup(func() { dropBank(t, pg, my, prefix) })
	var stderr bytes.Buffer
	rep, err := Run(context.Background(), &stderr, Options{PGURL: pg, MyURL: my, StoreURL: pg, Prefix: prefix,
		LogDir: t.TempDir(), NodeID: fmt.Sprintf("bs%06x", rand.Uint32()%0xffffff),
		Clients: []int{4}, Modes: []string{"xa-store", "xa-store-own"}, Duration: time.Second, Rounds: 2, Warmup: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("%v\nstderr: %s", err, stderr.String())
	}
	for _, r := range rep.Results {
		if r.Committed == 0 || r.Aborted != 0 || r.InDoubt != 0 || r.StoreRoundTrips == 0 {
			t.Errorf("%s: %+v", r.Mode, r)
		}
	}
	if inv := rep.Invariants; !inv.OK || len(inv.PreparedLeft) != 0 || inv.DecisionRowsLeft != 0 {
		t.Fatalf("invariants: %+v", inv)
	}
	if rep.Store != redact.URL(pg) {
		t.Errorf("report's store %q, want %q", rep.Store, redact.URL(pg))
	}
}

// A run told to start at an instant its setup has already passed fails
// rather than measure a window other processes do not share.
func TestBenchStartAtPassed(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	prefix := fmt.Sprintf("xab_bench_a%08x", rand.Uint32())
	t.Cleanup(func() { dropBank(t, pg, my, prefix) })
	_, err := Run(context.Background(), io.Discard, Options{PGURL: pg, MyURL: my, Prefix: prefix, LogDir: t.TempDir(), NodeID: "ba",
		Clients: []int{1}, Modes: []string{"baseline"}, Duration: 100 * time.Millisecond, Rounds: 1, StartAt: time.Now().Add(-time.Second)})
	if err == nil || !strings.Contains(err.Error(), "give more time") {
		t.Fatalf("Run = %v, want the start time refused", err)
	}
}

func dropBank(t *testing.T, pg, my, prefix string) {
	b, err := bank.Open(context.Background(), pg, my, 2)
	if err != nil {
		t.Error(err)
		return
	}
	defer b.Close()
	if err := b.SetPrefix(prefix); err == nil {
		_ = b.Drop(context.Background())
	}
}

// createDatabase makes the default store database when it is missing and
// accepts one that exists, also when several processes race to create it.
func TestCreateDatabase(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbtest.PG(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the DROP below: cleanups run last first
	name := fmt.Sprintf("xab_bench_db%08x_store", rand.Uint32())
	t.Cleanup(func() {
		if _, err := pool.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Error(err)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = createDatabase(ctx, pool, name) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("creator %d: %v", i, err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d databases named %s (%v), want 1", n, name, err)
	}
	if err := createDatabase(ctx, pool, name); err != nil {
		t.Errorf("again, with the database there: %v", err)
	}
}

func TestDefaultStoreURL(t *testing.T) {
	tests := []struct{ pg, want, err string }{
		{"postgres://u:pw@h:5432/shop?sslmode=disable", "postgres://u:pw@h:5432/shop_store?sslmode=disable", ""},
		{"postgresql://h/db", "postgresql://h/db_store", ""},
		{"postgres://u:hunter2@h/", "", "names no database"},
		{"host=h dbname=db password=hunter2", "", "not a postgres:// URL"},
		{"postgres://h/" + strings.Repeat("d", 58), "", "longer than PostgreSQL's 63 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.pg, func(t *testing.T) {
			got, err := DefaultStoreURL(tt.pg)
			if tt.err == "" && (err != nil || got != tt.want) || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("DefaultStoreURL = %q, %v; want %q, %q", got, err, tt.want, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
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
		{"store not postgres", func(o *Options) { o.StoreURL = "mysql://u:hunter2@h/db" }, "--store mysql://u:xxxxx@h/db: the shared decision store is a PostgreSQL database"},
		{"store unreadable", func(o *Options) { o.StoreURL = "postgres://u:hunter2@h:port/db" }, "--store postgres://u:xxxxx@h:port/db: not a valid URL"},
		{"store ambiguous", func(o *Options) { o.StoreURL = "postgres://u:12/hunter2@h/db" }, "percent-encode the password"},
		{"store not a URL", func(o *Options) { o.StoreURL = "host=h dbname=db password=hunter2" }, "--store host=h dbname=db password=xxxxx: want a PostgreSQL URL"},
		{"store not derivable", func(o *Options) { o.PGURL = "host=h dbname=db password=hunter2" }, "cannot derive the store's database"},
		{"store not needed", func(o *Options) {
			o.PGURL, o.Modes = "host=h dbname=db", []string{"baseline", "xa", "xa-store-own"}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good()
			tt.change(&o)
			err := o.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}

// The report records the command line without the passwords in it, in
// both output formats.
func TestReportMasksPasswords(t *testing.T) {
	o := Options{Duration: time.Second, Rounds: 1, Modes: []string{"xa-store"}, PGURL: "postgres://u:hunter2@h/db",
		Command: []string{"xabridge", "bench", "--pg", "postgres://u:hunter2@h/db", "--mysql=mysql://u:hunter2@h/db?password=hunter2",
			"--store", "postgres://u:hunter2@h/other"}}
	rep := newReport(&o)
	var js, tab bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	rep.WriteTable(&tab)
	if !strings.Contains(js.String(), `"command": "xabridge bench --pg postgres://u:xxxxx@h/db --mysql=mysql://u:xxxxx@h/db?password=xxxxx --store postgres://u:xxxxx@h/other"`) ||
		!strings.Contains(js.String(), `"store": "postgres://u:xxxxx@h/db_store"`) || !strings.Contains(tab.String(), "store (xa-store): postgres://u:xxxxx@h/db_store") {
		t.Errorf("JSON command line:\n%s", js.String())
	}
	if s := js.String() + tab.String(); strings.Contains(s, "hunter2") {
		t.Errorf("the report shows a password:\n%s", s)
	}
}
