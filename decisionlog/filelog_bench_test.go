package decisionlog

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// BenchmarkFileLogCommit measures durable commit decisions on the disk under
// b.TempDir (set TMPDIR to benchmark another one), one client at a time and
// with many concurrent clients sharing fsyncs (group commit). It reports
// commits/s and syncs/op, the fsyncs per decision.
func BenchmarkFileLogCommit(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		l, next := flBenchLog(b)
		ctx := context.Background()
		base := l.Stats()
		for b.Loop() {
			if err := l.Commit(ctx, flDecision(next(), "pg", "mysql")); err != nil {
				b.Fatal(err)
			}
		}
		flReportMetrics(b, l, base)
	})
	for _, clients := range []int{8, 64} {
		b.Run(fmt.Sprintf("parallel-%d", clients), func(b *testing.B) {
			l, next := flBenchLog(b)
			ctx := context.Background()
			base := l.Stats()
			// RunParallel starts parallelism × GOMAXPROCS goroutines.
			b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Commit(ctx, flDecision(next(), "pg", "mysql")); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			flReportMetrics(b, l, base)
		})
	}
}

// BenchmarkFileLogCommitEnd is the coordinator's full use of the log per
// transaction: a durable Commit, then an End that rides the next batch (End
// records cost no fsync of their own). With a commit delay (group-commit
// window) more decisions share each fsync, at the price of that much
// latency per decision.
func BenchmarkFileLogCommitEnd(b *testing.B) {
	for _, bc := range []struct {
		clients int
		delay   time.Duration
	}{{8, 0}, {32, 0}, {32, 500 * time.Microsecond}, {32, time.Millisecond}, {64, 0}} {
		b.Run(fmt.Sprintf("clients-%d/delay-%s", bc.clients, bc.delay), func(b *testing.B) {
			l, next := flBenchLog(b, FileLogOptions{CommitDelay: bc.delay})
			ctx := context.Background()
			base := l.Stats()
			b.SetParallelism(max(1, bc.clients/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					gt := next()
					if err := l.Commit(ctx, flDecision(gt, "pg", "mysql")); err != nil {
						b.Error(err)
						return
					}
					if err := l.End(gt); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			flReportMetrics(b, l, base)
		})
	}
}

// flBenchLog opens a log on the real clock and returns a source of fresh
// gtrids whose deadline is far away.
func flBenchLog(b *testing.B, opts ...FileLogOptions) (*FileLog, func() drivers.GlobalID) {
	b.Helper()
	var o FileLogOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	l, err := OpenFileLog(b.TempDir(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	var seq atomic.Uint32
	deadline := time.Now().Add(24 * time.Hour)
	return l, func() drivers.GlobalID { return flGID(seq.Add(1), deadline) }
}

func flReportMetrics(b *testing.B, l *FileLog, base FileLogStats) {
	s := l.Stats()
	b.ReportMetric(float64(s.Syncs-base.Syncs)/float64(b.N), "syncs/op")
	if batches := s.Batches - base.Batches; batches > 0 {
		b.ReportMetric(float64(s.Appends-base.Appends)/float64(batches), "records/batch")
	}
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(b.N)/sec, "commits/s")
	}
}
