package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/xa"
)

// printState prints the invariant check; want < 0 means "the starting total
// is unknown", so conservation is checked against the transfer amounts.
func printState(w io.Writer, st bank.State, want int64) error {
	fmt.Fprintf(w, "balances:  postgres %d + mysql %d = %d", st.PGTotal, st.MyTotal, st.Total())
	conserved := true
	if want >= 0 {
		conserved = st.Total() == want
		fmt.Fprintf(w, " (start %d)", want)
	}
	// Independent of the start: money that left PostgreSQL arrived in MySQL.
	if st.NetPG != st.NetMy {
		conserved = false
	}
	fmt.Fprintf(w, "  %s\n", mark(conserved, "conserved", "NOT CONSERVED"))
	fmt.Fprintf(w, "transfers: %d in postgres, %d in mysql, %d in only one  %s\n",
		st.PGTransfers, st.MyTransfers, len(st.OnlyPG)+len(st.OnlyMy), mark(st.Violations() == 0, "atomic", "ATOMICITY VIOLATED"))
	for _, id := range st.OnlyPG {
		fmt.Fprintf(w, "  only in postgres: %s\n", id)
	}
	for _, id := range st.OnlyMy {
		fmt.Fprintf(w, "  only in mysql: %s\n", id)
	}
	if !conserved || st.Violations() > 0 {
		return ErrViolated
	}
	return nil
}

func mark(ok bool, yes, no string) string {
	if ok {
		return "ok: " + yes
	}
	return "FAIL: " + no
}

// runStats is what a batch of transfers did.
type runStats struct {
	committed, aborted, noFunds, inDoubt, pending atomic.Int64
	elapsed                                       time.Duration
	lat                                           []time.Duration
}

func (s *runStats) line(label string) string {
	slices.Sort(s.lat)
	tps := float64(s.committed.Load()) / s.elapsed.Seconds()
	return fmt.Sprintf("%-26s committed %6d  aborted %5d (insufficient funds %d)  in doubt %d  pending %d  %8.1f tx/s  p50 %s  p99 %s",
		label, s.committed.Load(), s.aborted.Load(), s.noFunds.Load(), s.inDoubt.Load(), s.pending.Load(), tps,
		fmtDur(percentile(s.lat, 0.50)), fmtDur(percentile(s.lat, 0.99)))
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * q)
	return sorted[i]
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// workers runs count jobs over n goroutines; job(i, rng) returns the
// outcome. It stops early when ctx ends.
func workers(ctx context.Context, count, n int, seed uint64, job func(ctx context.Context, rng *rand.Rand) error, st *runStats) {
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var lat []time.Duration
			for ctx.Err() == nil && next.Add(1) <= int64(count) {
				t0 := time.Now()
				err := job(ctx, rng)
				d := time.Since(t0)
				switch {
				case err == nil:
					st.committed.Add(1)
					lat = append(lat, d)
				case errors.Is(err, bank.ErrInsufficientFunds):
					st.aborted.Add(1)
					st.noFunds.Add(1)
				case errors.Is(err, xa.ErrCommitPending):
					st.pending.Add(1)
					lat = append(lat, d)
				case errors.Is(err, xa.ErrOutcomeUnknown):
					st.inDoubt.Add(1)
				default:
					st.aborted.Add(1)
				}
			}
			mu.Lock()
			st.lat = append(st.lat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	st.elapsed = time.Since(start)
}

func randomTransfer(rng *rand.Rand, accounts int) bank.Transfer {
	amt := rng.Int64N(100) + 1
	if rng.IntN(2) == 0 {
		amt = -amt
	}
	return bank.Transfer{PGAccount: rng.Int64N(int64(accounts)) + 1, MyAccount: rng.Int64N(int64(accounts)) + 1, Amount: amt}
}
