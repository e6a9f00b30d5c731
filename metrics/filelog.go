package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/xabridge/xabridge/decisionlog"
)

// FileLogStatser is what the decision-log collector reads: *decisionlog.FileLog.
type FileLogStatser interface {
	Stats() decisionlog.FileLogStats
}

// fileLogCollector reads a FileLog's counters at each scrape: no goroutine
// polls it.
type fileLogCollector struct {
	l FileLogStatser

	fsyncs, records, lazy, batch, size, entries, live, compactions, fenced, truncated, failed *prometheus.Desc
}

// NewFileLogCollector returns a Collector of a decision log's counters
// (fsyncs, records, records per fsynced batch, size, fail-stop state),
// read from l.Stats() at each scrape. Register it next to New's metrics.
func NewFileLogCollector(l FileLogStatser) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &fileLogCollector{
		l:           l,
		fsyncs:      d("xabridge_decision_log_fsyncs_total", "fsyncs the decision log issued (log file, compaction, directory)."),
		records:     d("xabridge_decision_log_records_total", "Records written to the decision log (decisions, aborts, actions, end records)."),
		lazy:        d("xabridge_decision_log_lazy_writes_total", "Writes of records nobody waits for (end records), left for the next fsync."),
		batch:       d("xabridge_decision_log_batch_records", "Records per fsynced group-commit batch of the decision log."),
		size:        d("xabridge_decision_log_size_bytes", "Current size of the decision log file."),
		entries:     d("xabridge_decision_log_entries", "Transactions the decision log holds in memory."),
		live:        d("xabridge_decision_log_live_entries", "Transactions the decision log must keep (compaction drops the rest)."),
		compactions: d("xabridge_decision_log_compactions_total", "Compactions of the decision log."),
		fenced:      d("xabridge_decision_log_fenced_total", "Commit decisions the decision log refused because they came after the fence."),
		truncated:   d("xabridge_decision_log_truncated_bytes_total", "Torn-tail bytes cut from the decision log when it was opened."),
		failed:      d("xabridge_decision_log_failed", "1 when a write failed and the decision log is fail-stopped (refusing every decision until reopened), else 0."),
	}
}

// Describe implements prometheus.Collector.
func (c *fileLogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.fsyncs, c.records, c.lazy, c.batch, c.size, c.entries, c.live, c.compactions, c.fenced, c.truncated, c.failed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *fileLogCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.l.Stats()
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(c.fsyncs, s.Syncs)
	counter(c.records, s.Appends)
	counter(c.lazy, s.LazyWrites)
	counter(c.compactions, s.Compactions)
	counter(c.fenced, s.Fenced)
	counter(c.truncated, s.TruncatedBytes)
	gauge(c.size, s.Bytes)
	gauge(c.entries, int64(s.Entries))
	gauge(c.live, int64(s.Live))
	var failed int64
	if s.Failed {
		failed = 1
	}
	gauge(c.failed, failed)

	// BatchSizes holds per-bucket counts with bounds 1, 2, 4, ...; a
	// Prometheus histogram wants cumulative counts by upper bound.
	buckets := make(map[float64]uint64, decisionlog.BatchSizeBuckets-1)
	var cum, total uint64
	for i, n := range s.BatchSizes {
		total += uint64(n)
		if i < decisionlog.BatchSizeBuckets-1 {
			cum += uint64(n)
			buckets[float64(int64(1)<<i)] = cum
		}
	}
	ch <- prometheus.MustNewConstHistogram(c.batch, total, float64(s.BatchRecords), buckets)
}
