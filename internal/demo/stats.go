package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xabridge/xabridge/drivers"
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

	mu      sync.Mutex
	reasons map[xa.Reason]*reasonCount // aborts other than insufficient funds, by xa.ReasonOf
}

// reasonCount is how many transfers aborted for one reason, and the first
// error, as an example.
type reasonCount struct {
	n       int64
	example error
}

// abort counts an abort that is not the workload's own (insufficient
// funds), by reason.
func (s *runStats) abort(err error) {
	s.aborted.Add(1)
	r := xa.ReasonOf(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reasons == nil {
		s.reasons = map[xa.Reason]*reasonCount{}
	}
	c := s.reasons[r]
	if c == nil {
		c = &reasonCount{example: err}
		s.reasons[r] = c
	}
	c.n++
}

// failed counts the aborts that are not insufficient funds.
func (s *runStats) failed() int64 { return s.aborted.Load() - s.noFunds.Load() }

// reasonLines describes the aborts other than insufficient funds: one line
// per reason, most frequent first, with its first error.
func (s *runStats) reasonLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := make([]xa.Reason, 0, len(s.reasons))
	for r := range s.reasons {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b xa.Reason) int {
		if d := s.reasons[b].n - s.reasons[a].n; d != 0 {
			return int(max(-1, min(1, d)))
		}
		return strings.Compare(string(a), string(b))
	})
	var out []string
	for _, r := range rs {
		c := s.reasons[r]
		out = append(out, fmt.Sprintf("%-26s %d %s, e.g. %s", "aborted", c.n, r, drivers.OneLine(c.example.Error())))
	}
	return out
}

// brokenSetup says why the run shows the setup, not the workload, is at
// fault, or "" if it does not: no transfer committed although some were
// tried, or at least half of them aborted for a reason other than
// insufficient funds or contention (which a busy demo can cause on its
// own). A cancelled run is not judged.
func (s *runStats) brokenSetup() string {
	tried := s.committed.Load() + s.aborted.Load() + s.inDoubt.Load() + s.pending.Load()
	if tried == 0 {
		return ""
	}
	s.mu.Lock()
	bad := int64(0)
	for r, c := range s.reasons {
		if r != xa.ReasonConflict && r != xa.ReasonCanceled {
			bad += c.n
		}
	}
	s.mu.Unlock()
	switch {
	case s.committed.Load()+s.pending.Load() == 0 && s.failed() > 0:
		return fmt.Sprintf("no transfer committed: all %d of %d aborted or in doubt", tried-s.noFunds.Load(), tried)
	case bad*2 >= tried:
		return fmt.Sprintf("%d of %d transfers aborted for a reason other than insufficient funds or contention", bad, tried)
	}
	return ""
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
			// The end of ctx stops new transfers; one in flight runs to its
			// end (bounded by the coordinator's Timeout), so that an
			// interrupted demo leaves nothing half done behind.
			for ctx.Err() == nil && next.Add(1) <= int64(count) {
				t0 := time.Now()
				err := job(context.WithoutCancel(ctx), rng)
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
					st.abort(err)
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
