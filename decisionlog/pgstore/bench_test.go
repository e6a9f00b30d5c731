package pgstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
)

// BenchmarkCommitEnd is a coordinator's use of the log per transaction: a
// durable Commit, then an End that rides a later batch, with 1 and 32
// concurrent committers, on this store and on decisionlog.FileLog (under
// b.TempDir) in the same run. It reports decisions/s and round trips per
// decision (write statements for the store, fsyncs for the file log),
// the store also with a 2 ms CommitDelay.
func BenchmarkCommitEnd(b *testing.B) {
	for _, clients := range []int{1, 32} {
		for _, delay := range []time.Duration{0, 2 * time.Millisecond} {
			b.Run(fmt.Sprintf("store=pg/clients=%d/delay=%s", clients, delay), func(b *testing.B) {
				pool := testPool(b, nil)
				schema := testSchema(b, pool)
				s := openStore(b, pool, schema, "bench", func(o *Options) { o.LeaseTTL, o.CommitDelay = time.Minute, delay })
				base := s.Stats()
				runCommitEnd(b, s, "bench", clients)
				st := s.Stats()
				b.ReportMetric(float64(st.Batches-base.Batches)/float64(b.N), "roundtrips/op")
				b.ReportMetric(float64(st.Requests-base.Requests)/float64(max(1, st.Batches-base.Batches)), "requests/batch")
				b.ReportMetric(float64((st.BatchTime-base.BatchTime).Microseconds())/float64(max(1, st.Batches-base.Batches)), "µs/batch")
			})
		}
		b.Run(fmt.Sprintf("store=file/clients=%d", clients), func(b *testing.B) {
			l, err := decisionlog.OpenFileLog(b.TempDir(), decisionlog.FileLogOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			base := l.Stats()
			runCommitEnd(b, l, "bench", clients)
			st := l.Stats()
			b.ReportMetric(float64(st.Syncs-base.Syncs)/float64(b.N), "roundtrips/op")
			b.ReportMetric(float64(st.Appends-base.Appends)/float64(max(1, st.Batches-base.Batches)), "requests/batch")
		})
	}
}

// BenchmarkEndDelay is BenchmarkCommitEnd with a transaction's other work
// around the decision: prepare before the Commit, phase 2 between it and
// the End (sleeps standing in for the participants' round trips), so that
// ends arrive apart from decisions, as in a coordinator. It compares
// EndDelay off (-1) with the default, at 11 committers (one of three
// processes sharing 32 clients) and 32, and reports the statements per
// decision and those that carried only End records.
func BenchmarkEndDelay(b *testing.B) {
	const work = 2 * time.Millisecond
	for _, clients := range []int{11, 32} {
		for _, delay := range []time.Duration{-1, DefaultEndDelay} {
			b.Run(fmt.Sprintf("clients=%d/enddelay=%s", clients, delay), func(b *testing.B) {
				pool := testPool(b, nil)
				schema := testSchema(b, pool)
				var endsOnly atomic.Int64
				s := openStore(b, pool, schema, "bench", func(o *Options) {
					o.LeaseTTL, o.EndDelay = time.Minute, delay
					o.hooks = &testHooks{beforeBatch: func(_, waiters int) {
						if waiters == 0 {
							endsOnly.Add(1)
						}
					}}
				})
				base := s.Stats()
				endsOnly.Store(0)
				runWork(b, s, "bench", clients, work)
				st := s.Stats()
				b.ReportMetric(float64(st.Batches-base.Batches)/float64(b.N), "roundtrips/op")
				b.ReportMetric(float64(endsOnly.Load())/float64(b.N), "endonly/op")
				b.ReportMetric(float64(st.Requests-base.Requests)/float64(max(1, st.Batches-base.Batches)), "requests/batch")
			})
		}
	}
}

// runWork is runCommitEnd with work before each Commit and between it and
// its End.
func runWork(b *testing.B, l decisionlog.Log, node string, clients int, work time.Duration) {
	ctx := context.Background()
	deadline := time.Now().Add(time.Hour)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				g := gid(node, deadline)
				time.Sleep(work) // prepare
				if err := l.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
					b.Error(err)
					return
				}
				time.Sleep(work) // phase 2
				if err := l.End(g); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "decisions/s")
}

func runCommitEnd(b *testing.B, l decisionlog.Log, node string, clients int) {
	ctx := context.Background()
	deadline := time.Now().Add(time.Hour)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				g := gid(node, deadline)
				if err := l.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: parts()}); err != nil {
					b.Error(err)
					return
				}
				if err := l.End(g); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "decisions/s")
}
