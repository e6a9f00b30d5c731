package metrics_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// populated returns a registry with every metric of the package, each
// with series for the label values a running system produces, labelled
// with a node id as the CLI does.
func populated(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	labeled := prometheus.WrapRegistererWith(prometheus.Labels{"node": "n1"}, reg)
	m, err := metrics.New(labeled)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Close() })
	labeled.MustRegister(metrics.NewFileLogCollector(fl))
	g := drivers.MustGlobalID("n1", time.Now(), 1, time.Now().Add(time.Minute))
	if err := fl.Commit(context.Background(), decisionlog.Decision{GTRID: g, Participants: []decisionlog.Participant{{Resource: "a"}, {Resource: "b", Branch: 1}}}); err != nil {
		t.Fatal(err)
	}

	for _, st := range commitSteps() {
		m.Hook(st.s, st.info)
	}
	m.Hook(xa.StepPrepareFailed, xa.StepInfo{GTRID: g, Resource: "a", Branch: 0, Err: errors.New("no")})
	m.Hook(xa.StepCommitFailed, xa.StepInfo{GTRID: g, Resource: "b", Branch: 1, Err: errors.New("later")})
	for _, o := range []xa.Outcome{xa.Aborted, xa.CommitPending, xa.Unknown} {
		m.Hook(xa.StepBegin, xa.StepInfo{GTRID: g, Branch: -1})
		m.Hook(xa.StepFinished, xa.StepInfo{GTRID: g, Branch: -1, Outcome: o, Err: &xa.Error{Outcome: o, Op: xa.OpCommit}, Elapsed: time.Millisecond, Branches: 2})
	}

	x := drivers.XID{Global: g}
	var bs []recovery.Branch
	for _, c := range []recovery.Class{recovery.CommitPending, recovery.AbortPending, recovery.Orphan, recovery.Live,
		recovery.UnknownOwner, recovery.Heuristic, recovery.Foreign} {
		bs = append(bs, recovery.Branch{Resource: "a", Prepared: drivers.Prepared{XID: x, Ours: c != recovery.Foreign}, Class: c, Action: recovery.ActionNone, Age: time.Minute})
	}
	m.ObserveReport(&recovery.Report{Kind: recovery.KindScan, At: time.Now(), Resources: []string{"a", "b"}, Branches: bs})
	m.ObserveReport(&recovery.Report{
		Kind: recovery.KindPass, At: time.Now(), Duration: time.Millisecond, Resources: []string{"a", "b"},
		Branches: []recovery.Branch{
			{Resource: "a", Prepared: drivers.Prepared{XID: x, Ours: true}, Class: recovery.Heuristic, Action: recovery.ActionCommit, Result: recovery.ResultCommitted},
			{Resource: "a", Prepared: drivers.Prepared{XID: x, Ours: true}, Class: recovery.Orphan, Action: recovery.ActionRollback, Result: recovery.ResultRolledBack},
			{Resource: "a", Prepared: drivers.Prepared{XID: x, Ours: true}, Class: recovery.Orphan, Action: recovery.ActionRollback, Result: "failed: x", Err: errors.New("x")},
		},
		ScanErrors: []recovery.ResourceError{{Resource: "b", Err: errors.New("unreachable")}},
	})
	return reg
}

// registered lists the metric names (with their label names) that
// collectors describe.
func registered(cs ...prometheus.Collector) map[string]bool {
	ch := make(chan *prometheus.Desc, 256)
	for _, c := range cs {
		c.Describe(ch)
	}
	close(ch)
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range ch {
		if m := re.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	return names
}

// exposed is what a scrape of the populated registry shows: every metric
// name as it appears in PromQL (histograms as _bucket, _sum and _count),
// with its label names and the label values seen.
type exposed map[string]map[string]map[string]bool // name -> label -> values

func expose(t *testing.T, reg prometheus.Gatherer) exposed {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := exposed{}
	add := func(name string, m *dto.Metric, extra ...string) {
		if out[name] == nil {
			out[name] = map[string]map[string]bool{}
		}
		for _, l := range m.GetLabel() {
			if out[name][l.GetName()] == nil {
				out[name][l.GetName()] = map[string]bool{}
			}
			out[name][l.GetName()][l.GetValue()] = true
		}
		for _, e := range extra {
			if out[name][e] == nil {
				out[name][e] = map[string]bool{}
			}
		}
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			if f.GetType() == dto.MetricType_HISTOGRAM {
				add(f.GetName()+"_bucket", m, "le")
				add(f.GetName()+"_sum", m)
				add(f.GetName()+"_count", m)
				continue
			}
			add(f.GetName(), m)
		}
	}
	return out
}

// The populated registry is complete: every metric the package registers
// has series in it, so the checks below see all of them.
func TestPopulatedCoversEveryMetric(t *testing.T) {
	reg := populated(t)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	m, err := metrics.New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for name := range registered(m, metrics.NewFileLogCollector(nil)) {
		if !have[name] {
			t.Errorf("%s is registered but populated() gives it no series: extend populated", name)
		}
	}
}

// Grafana variables replaced before an expression is checked.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "${node}", ".*", "$node", ".*")

var (
	metricRef = regexp.MustCompile(`\b(xabridge_[a-zA-Z0-9_]+)\b(\{[^}]*\})?`)
	matcher   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	grouping  = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// checkExpr checks one PromQL expression against what the metrics expose:
// every xabridge metric it names exists, every label it matches or groups
// by exists on the metrics it names, and every label value it matches
// exactly is one the metrics produce.
func checkExpr(t *testing.T, where, expr string, ex exposed) {
	t.Helper()
	expr = grafanaVars.Replace(expr)
	refs := metricRef.FindAllStringSubmatch(expr, -1)
	if len(refs) == 0 {
		t.Errorf("%s: %q names no xabridge metric", where, expr)
		return
	}
	labelsOfAll := map[string]bool{}
	for _, r := range refs {
		labels, ok := ex[r[1]]
		if !ok {
			t.Errorf("%s: metric %s does not exist", where, r[1])
			continue
		}
		for l := range labels {
			labelsOfAll[l] = true
		}
		for _, mm := range matcher.FindAllStringSubmatch(r[2], -1) {
			name, op, val := mm[1], mm[2], mm[3]
			vals, ok := labels[name]
			if !ok {
				t.Errorf("%s: %s has no label %q", where, r[1], name)
				continue
			}
			if (op == "=" || op == "!=") && !vals[val] {
				t.Errorf("%s: %s{%s%s%q}: no series has %s=%q (values seen: %v)", where, r[1], name, op, val, name, val, keys(vals))
			}
		}
	}
	for _, gm := range grouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(gm[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !labelsOfAll[l] {
				t.Errorf("%s: groups by %q, which none of its metrics has", where, l)
			}
		}
	}
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced brackets in %q", where, expr)
	}
}

func keys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// strings walks a decoded JSON or YAML document and calls f with the path
// and value of every string in it.
func walkStrings(path string, v any, f func(path, s string)) {
	switch v := v.(type) {
	case string:
		f(path, v)
	case map[string]any:
		for k, e := range v {
			walkStrings(path+"."+k, e, f)
		}
	case []any:
		for _, e := range v {
			walkStrings(path+"[]", e, f)
		}
	}
}

// TestDashboardAndAlertsReferenceRealMetrics loads docs/grafana-dashboard.json
// and docs/prometheus-alerts.yml and checks every metric, label and label
// value their queries use against the metrics as registered, and that
// they cover what an operator needs.
func TestDashboardAndAlertsReferenceRealMetrics(t *testing.T) {
	ex := expose(t, populated(t))
	docs := filepath.Join("..", "docs")

	t.Run("dashboard", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(docs, "grafana-dashboard.json"))
		if err != nil {
			t.Fatal(err)
		}
		var dash map[string]any
		if err := json.Unmarshal(data, &dash); err != nil {
			t.Fatalf("not JSON: %v", err)
		}
		if dash["title"] == "" || dash["panels"] == nil {
			t.Fatal("no title or no panels")
		}
		var exprs []string
		walkStrings("", dash, func(path, s string) {
			switch {
			case strings.HasSuffix(path, ".expr"):
				exprs = append(exprs, s)
				checkExpr(t, path, s, ex)
			case strings.Contains(s, "xabridge_"):
				for _, r := range metricRef.FindAllStringSubmatch(grafanaVars.Replace(s), -1) {
					if _, ok := ex[r[1]]; !ok {
						t.Errorf("%s: metric %s does not exist", path, r[1])
					}
				}
			}
		})
		// The panels the issue asks for: rate and outcome ratio, latency
		// quantiles per phase, oldest prepared age, in-doubt count.
		for _, want := range []string{
			`rate(xabridge_transactions_finished_total`,
			`histogram_quantile(0.99, sum by (le, phase) (rate(xabridge_phase_duration_seconds_bucket`,
			`xabridge_prepared_oldest_age_seconds`,
			`xabridge_prepared_branches`,
		} {
			if !slices.ContainsFunc(exprs, func(e string) bool { return strings.Contains(e, want) }) {
				t.Errorf("no panel queries %s", want)
			}
		}
	})

	t.Run("alerts", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(docs, "prometheus-alerts.yml"))
		if err != nil {
			t.Fatal(err)
		}
		var rules struct {
			Groups []struct {
				Name  string `yaml:"name"`
				Rules []struct {
					Alert       string            `yaml:"alert"`
					Expr        string            `yaml:"expr"`
					For         string            `yaml:"for"`
					Labels      map[string]string `yaml:"labels"`
					Annotations map[string]string `yaml:"annotations"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&rules); err != nil {
			t.Fatalf("not a Prometheus rule file: %v", err)
		}
		var all []string
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
					t.Errorf("rule %q: needs alert, expr, labels.severity and annotations.summary", r.Alert)
				}
				if r.For != "" {
					if _, err := time.ParseDuration(r.For); err != nil {
						t.Errorf("rule %s: for %q: %v", r.Alert, r.For, err)
					}
				}
				checkExpr(t, "alert "+r.Alert, r.Expr, ex)
				all = append(all, r.Expr)
			}
		}
		for _, want := range []string{
			"xabridge_prepared_oldest_age_seconds", // oldest prepared age over a threshold
			"xabridge_recovery_scan_errors_total",  // recovery failures
			"xabridge_recovery_action_failures_total",
			"xabridge_heuristic_outcomes_total", // heuristic outcomes
		} {
			if !slices.ContainsFunc(all, func(e string) bool { return strings.Contains(e, want) }) {
				t.Errorf("no alert on %s", want)
			}
		}
	})
}
