package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
)

// syncBuffer is a bytes.Buffer a running command writes to while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// background runs the CLI in-process until its context is cancelled.
type background struct {
	out, errb syncBuffer
	cancel    context.CancelFunc
	done      chan int
}

func startCLI(args ...string) *background {
	ctx, cancel := context.WithCancel(context.Background())
	bg := &background{cancel: cancel, done: make(chan int, 1)}
	go func() { bg.done <- run(ctx, args, &bg.out, &bg.errb) }()
	return bg
}

// stop cancels the command and returns its exit code.
func (bg *background) stop(t *testing.T) int {
	t.Helper()
	bg.cancel()
	select {
	case code := <-bg.done:
		return code
	case <-time.After(60 * time.Second):
		t.Fatal("the command did not stop within 60s of its cancellation")
		return -1
	}
}

var servingRE = regexp.MustCompile(`serving metrics at (http://\S+/metrics)`)

// metricsURL waits for the command to say where it serves /metrics.
func (bg *background) metricsURL(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(bg.errb.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-bg.done:
			t.Fatalf("the command exited (%d) without serving metrics:\n%s%s", code, bg.out.String(), bg.errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics address announced in 30s:\n%s", bg.errb.String())
		}
	}
}

// scrape fetches and parses /metrics.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: not the Prometheus text format: %v", url, err)
	}
	return fams
}

// sample returns the value of name's series with exactly these labels
// (counter or gauge), and whether it exists.
func sample(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		if m.Counter != nil {
			return m.GetCounter().GetValue(), true
		}
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// pollMetrics scrapes until cond holds, for at most d.
func pollMetrics(t *testing.T, url string, d time.Duration, what string, cond func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		fams := scrape(t, url)
		if cond(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in %s", what, d)
		}
		time.Sleep(20 * time.Millisecond) // the scrape interval of this test
	}
}

// The "done when", end to end: a coordinator dies after phase 1
// on both databases; `xabridge recover --watch` for its node serves
// /metrics, where the oldest-prepared age of each resource climbs above 0,
// then falls to 0 once recovery has resolved the branches.
func TestRecoverWatchMetricsShowOrphanThenRecovery(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	ctx := context.Background()
	b, err := bank.Open(ctx, pg, my, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix("xab_ow_" + randHex(3)); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 4, 100); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Drop(context.Background()); b.Close() })
	node := "ow-" + randHex(3)
	logDir := newLogDir(t)

	// The dead coordinator's branches: prepared, no decision anywhere.
	g := strand.GlobalID(node, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), 1)
	upd := fmt.Sprintf("UPDATE %s SET balance = balance + 9 WHERE id = 1", b.Table("accounts"))
	if err := strand.Prepare(ctx, b.PG, drivers.XID{Global: g, Branch: 0}, upd); err != nil {
		t.Fatal(err)
	}
	if err := strand.Prepare(ctx, b.My, drivers.XID{Global: g, Branch: 1}, upd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i, r := range []drivers.Resource{b.PG, b.My} {
			_ = r.RollbackPrepared(context.Background(), drivers.XID{Global: g, Branch: uint8(i)})
		}
	})

	bg := startCLI("--node-id", node, "--log-dir", logDir, "--resource", "pg="+pg, "--resource", "mysql="+my,
		"recover", "--watch", "--interval", "2s", "--min-age", "0s", "--metrics-addr", "127.0.0.1:0")
	url := bg.metricsURL(t)
	age := func(fams map[string]*dto.MetricFamily, res string) (float64, bool) {
		return sample(fams, "xabridge_prepared_oldest_age_seconds", map[string]string{"node": node, "resource": res})
	}

	// The first pass sees the branches; the two-scan rule holds them for
	// at least one more interval, during which the age shows.
	pollMetrics(t, url, 30*time.Second, "oldest prepared age > 0 on pg and mysql", func(f map[string]*dto.MetricFamily) bool {
		a, ok1 := age(f, "pg")
		c, ok2 := age(f, "mysql")
		return ok1 && ok2 && a >= 60 && c >= 60
	})
	// Then recovery rolls them back and the age falls to 0.
	fams := pollMetrics(t, url, 60*time.Second, "oldest prepared age back to 0", func(f map[string]*dto.MetricFamily) bool {
		a, ok1 := age(f, "pg")
		c, ok2 := age(f, "mysql")
		return ok1 && ok2 && a == 0 && c == 0
	})
	for _, res := range []string{"pg", "mysql"} {
		if v, _ := sample(fams, "xabridge_recovery_branches_resolved_total", map[string]string{"node": node, "resource": res, "action": "rollback"}); v != 1 {
			t.Errorf("resolved rollbacks on %s = %v, want 1", res, v)
		}
		if v, _ := sample(fams, "xabridge_prepared_branches", map[string]string{"node": node, "resource": res, "class": "orphan"}); v != 0 {
			t.Errorf("orphans on %s = %v after recovery, want 0", res, v)
		}
	}
	if v, _ := sample(fams, "xabridge_recovery_passes_total", map[string]string{"node": node}); v < 2 {
		t.Errorf("recovery passes = %v, want at least 2", v)
	}
	if v, _ := sample(fams, "xabridge_decision_log_records_total", map[string]string{"node": node}); v < 1 {
		t.Errorf("decision log records = %v: recovery's presumed abort was not logged", v)
	}
	if _, ok := sample(fams, "go_goroutines", nil); !ok {
		t.Error("the process's own metrics (go_goroutines) are missing")
	}

	if code := bg.stop(t); code != exitOK {
		t.Errorf("recover --watch exit %d after cancellation, want 0\n%s", code, bg.errb.String())
	}
	logs := bg.errb.String()
	for _, want := range []string{"in-doubt branch found", "recovery resolved a branch", "gtrid=" + g.String()} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log on stderr lacks %q:\n%s", want, logs)
		}
	}
	pgBal, myBal, err := b.Balances(ctx, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if pgBal != 100 || myBal != 100 {
		t.Errorf("balances %d/%d, want 100/100: the orphan was not rolled back", pgBal, myBal)
	}
}

func TestRecoverMetricsFlagsBadInput(t *testing.T) {
	pg := dbtest.PG(t)
	base := []string{"--node-id", "mb", "--log-dir", newLogDir(t), "--resource", "pg=" + pg}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"metrics address without --watch", append(base, "recover", "--metrics-addr", "127.0.0.1:0"), exitUsage, "go with --watch"},
		{"bad metrics address", append(base, "recover", "--watch", "--metrics-addr", "nowhere"), exitUsage, `--metrics-addr "nowhere"`},
		{"metrics address taken", append(base, "recover", "--watch", "--metrics-addr", "%TAKEN%"), exitError, "address already in use"},
		{"bad demo metrics address", []string{"demo", "transfer", "--pg", pg, "--mysql", "mysql://x@127.0.0.1:1/x", "--metrics-addr", "9464"}, exitUsage, "--metrics-addr"},
		{"bad log level", append(base, "recover", "--watch", "--log-level", "loud"), exitUsage, "--log-level"},
		{"bad recover interval for the demo", []string{"demo", "transfer", "--pg", pg, "--mysql", "mysql://x@127.0.0.1:1/x", "--recover-interval", "0s"}, exitUsage, "--recover-interval"},
		{"bad decision resource for the demo", []string{"demo", "transfer", "--pg", pg, "--mysql", "mysql://x@127.0.0.1:1/x", "--decision-resource", "ledger"}, exitUsage, "--decision-resource"},
		{"bad commit delay for the demo", []string{"demo", "transfer", "--pg", pg, "--mysql", "mysql://x@127.0.0.1:1/x", "--commit-delay", "-1ms"}, exitUsage, "--commit-delay"},
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, a := range tt.args {
				if a == "%TAKEN%" {
					tt.args[i] = taken.Addr().String()
				}
			}
			out, errOut, code := cli(t, tt.args...)
			if code != tt.code || !strings.Contains(out+errOut, tt.want) {
				t.Errorf("exit %d, want %d, mentioning %q:\n%s%s", code, tt.code, tt.want, out, errOut)
			}
		})
	}
}

// A long demo run serves its coordinator's and its recovery loop's
// metrics while it runs.
func TestDemoServesMetrics(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	prefix := "xab_od_" + randHex(3)
	node := "od-" + randHex(3)
	logDir := t.TempDir()
	base := []string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + pg, "--resource", "mysql=" + my}
	t.Cleanup(func() {
		// A cancelled demo may leave branches in doubt: settle them before
		// dropping the tables they lock.
		if out, errOut, code := cli(t, append(base, "recover", "--min-age", "0s")...); code != exitOK {
			t.Errorf("recover after the demo: exit %d\n%s%s", code, out, errOut)
		}
		b, err := bank.Open(context.Background(), pg, my, 2)
		if err == nil {
			_ = b.SetPrefix(prefix)
			_ = b.Drop(context.Background())
			b.Close()
		}
	})
	bg := startCLI("demo", "transfer", "--pg", pg, "--mysql", my, "--count", "1000000", "--concurrency", "2",
		"--table-prefix", prefix, "--node-id", node, "--log-dir", logDir,
		"--metrics-addr", "127.0.0.1:0", "--recover-interval", "10ms")
	url := bg.metricsURL(t)
	labels := func(extra ...string) map[string]string {
		l := map[string]string{"node": node}
		for i := 0; i+1 < len(extra); i += 2 {
			l[extra[i]] = extra[i+1]
		}
		return l
	}
	pollMetrics(t, url, 60*time.Second, "commits, fsyncs and recovery passes", func(f map[string]*dto.MetricFamily) bool {
		c, _ := sample(f, "xabridge_transactions_finished_total", labels("outcome", "committed", "reason", "none"))
		s, _ := sample(f, "xabridge_decision_log_fsyncs_total", labels())
		p, _ := sample(f, "xabridge_recovery_passes_total", labels())
		_, gauge := sample(f, "xabridge_prepared_oldest_age_seconds", labels("resource", "pg"))
		return c >= 1000 && s >= 1 && p >= 20 && gauge
	})
	code := bg.stop(t)
	errOut := bg.errb.String()
	// Cancelled, it stops cleanly: transfers in flight finish, the
	// invariants are checked and hold.
	if code != exitOK {
		t.Errorf("cancelled demo: exit %d, want %d (a clean stop)\n%s", code, exitOK, errOut)
	}
	// The recovery loop next to the running coordinator sees its branches
	// come and go; none of that is a heuristic outcome.
	if strings.Contains(errOut, "heuristic") {
		t.Errorf("the demo's recovery loop reported a heuristic outcome:\n%s", errOut)
	}
	// Its atomicity holds.
	if out, errOut, code := cli(t, append(base, "recover", "--min-age", "0s")...); code != exitOK {
		t.Fatalf("recover: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := cli(t, "demo", "check", "--pg", pg, "--mysql", my, "--table-prefix", prefix, "--nodes", node); code != exitOK {
		t.Fatalf("demo invariants violated: exit %d\n%s%s", code, out, errOut)
	}
}

// recover --watch against a server it cannot reach, given a password: the
// scan errors are logged and counted, and neither the log nor /metrics
// shows the password.
func TestRecoverWatchNeverShowsPasswords(t *testing.T) {
	bg := startCLI("--node-id", "pw", "--log-dir", newLogDir(t),
		"--resource", "pg=postgres://u:s3cretpw@127.0.0.1:1/db?connect_timeout=2",
		"--resource", "mysql="+dbtest.MySQL(t),
		"recover", "--watch", "--interval", "200ms", "--metrics-addr", "127.0.0.1:0")
	url := bg.metricsURL(t)
	var body string
	pollMetrics(t, url, 30*time.Second, "scan errors on the unreachable resource", func(f map[string]*dto.MetricFamily) bool {
		p, _ := sample(f, "xabridge_recovery_scan_errors_total", map[string]string{"node": "pw", "resource": "pg"})
		return p >= 2
	})
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	_, _ = io.Copy(&sb, resp.Body)
	resp.Body.Close()
	body = sb.String()
	if code := bg.stop(t); code != exitOK {
		t.Errorf("exit %d, want 0", code)
	}
	all := bg.out.String() + bg.errb.String() + body
	if !strings.Contains(bg.errb.String(), "recovery scan failed") {
		t.Errorf("the scan failures are not logged:\n%s", bg.errb.String())
	}
	if strings.Contains(all, "s3cretpw") {
		t.Errorf("a password leaked:\n%s", all)
	}
}
