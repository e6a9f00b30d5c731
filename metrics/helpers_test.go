package metrics_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/xa"
)

// value returns the sum over the series of name whose labels include
// labels. name may end in _count or _sum to read a histogram's count or
// sum, or _bucket with an "le" label for one cumulative bucket.
func value(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	base, part := name, ""
	for _, suf := range []string{"_count", "_sum", "_bucket"} {
		if b, ok := strings.CutSuffix(name, suf); ok && family(fams, name) == nil {
			base, part = b, suf
		}
	}
	f := family(fams, base)
	if f == nil {
		return 0 // no series yet
	}
	var sum float64
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels, part == "_bucket") {
			continue
		}
		switch {
		case part == "_count":
			sum += float64(m.GetHistogram().GetSampleCount())
		case part == "_sum":
			sum += m.GetHistogram().GetSampleSum()
		case part == "_bucket":
			le, err := strconv.ParseFloat(labels["le"], 64)
			if err != nil {
				t.Fatalf("%s: le %q: %v", name, labels["le"], err)
			}
			for _, b := range m.GetHistogram().GetBucket() {
				if b.GetUpperBound() == le {
					sum += float64(b.GetCumulativeCount())
				}
			}
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		default:
			t.Fatalf("%s: read it with a _count or _sum suffix", name)
		}
	}
	return sum
}

func family(fams []*dto.MetricFamily, name string) *dto.MetricFamily {
	for _, f := range fams {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func hasLabels(m *dto.Metric, want map[string]string, skipLe bool) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if skipLe && k == "le" {
			continue
		}
		if have[k] != v {
			return false
		}
	}
	return true
}

func strconvFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// series lists "name{labels} value" for every series of the registry whose
// name starts with xabridge_, for failure messages.
func series(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "xabridge_") {
			continue
		}
		for _, m := range f.GetMetric() {
			b.WriteString(f.GetName())
			b.WriteString("{")
			for i, l := range m.GetLabel() {
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString(l.GetName() + "=" + l.GetValue())
			}
			b.WriteString("} ")
			switch {
			case m.Counter != nil:
				b.WriteString(strconvFloat(m.GetCounter().GetValue()))
			case m.Gauge != nil:
				b.WriteString(strconvFloat(m.GetGauge().GetValue()))
			case m.Histogram != nil:
				b.WriteString("count=" + strconvFloat(float64(m.GetHistogram().GetSampleCount())))
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// both enlists a and b in tx.
func both(ctx context.Context, tx *xa.Tx, a, b drivers.Resource) error {
	if _, err := tx.Enlist(ctx, a); err != nil {
		return err
	}
	_, err := tx.Enlist(ctx, b)
	return err
}
