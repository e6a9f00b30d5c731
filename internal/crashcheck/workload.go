package crashcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
)

// Order is the order in which a transfer enlists its two branches, which
// decides their branch numbers (the first enlisted is branch 0).
type Order string

// Enlist orders.
const (
	PGFirst Order = "pg-first" // PostgreSQL is branch 0, MySQL branch 1
	MyFirst Order = "my-first" // MySQL is branch 0, PostgreSQL branch 1
	Mixed   Order = "mixed"    // chosen at random per transfer
)

// ParseOrder checks an enlist order name.
func ParseOrder(s string) (Order, error) {
	switch o := Order(s); o {
	case PGFirst, MyFirst, Mixed:
		return o, nil
	}
	return "", fmt.Errorf("crashcheck: enlist order %q: want pg-first, my-first or mixed", s)
}

// Transfer runs t as one global transaction like bank.Bank.Do, but enlists
// the branches in the given order (PGFirst or MyFirst). The statements run
// PostgreSQL first either way: one lock order across the two databases, so
// transfers never wait on each other in a cycle neither database can see.
// begun, if set, is called with the transfer id (the global id) as soon as
// the transaction exists.
func Transfer(ctx context.Context, c *xa.Coordinator, b *bank.Bank, t bank.Transfer, order Order, begun func(id string)) (id string, err error) {
	accounts, transfers := b.Table("accounts"), b.Table("transfers")
	enlisted := false
	defer func() {
		// Work-around: xa's Run panics (sync: negative WaitGroup counter,
		// parallel(0) in rollbackBranches) when the callback fails before
		// any branch was enlisted, e.g. with the first database down. That
		// transaction touched nothing: report it aborted.
		if p := recover(); p != nil {
			if enlisted {
				panic(p)
			}
			err = fmt.Errorf("%w: no branch was enlisted (coordinator panicked rolling back nothing: %v)", errNothingEnlisted, p)
		}
	}()
	err = c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		id = tx.GlobalID().String()
		if begun != nil {
			begun(id)
		}
		var pg *postgres.Branch
		var my *mysql.Branch
		var err error
		if order == MyFirst {
			if my, err = b.My.Enlist(ctx, tx); err != nil {
				return err
			}
			enlisted = true
		}
		if pg, err = b.PG.Enlist(ctx, tx); err != nil {
			return err
		}
		enlisted = true
		if my == nil {
			if my, err = b.My.Enlist(ctx, tx); err != nil {
				return err
			}
		}
		tag, err := pg.Exec(ctx, "UPDATE "+accounts+" SET balance = balance - $1 WHERE id = $2 AND balance - $1 >= 0", t.Amount, t.PGAccount)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return bank.ErrInsufficientFunds
		}
		if _, err := pg.Exec(ctx, "INSERT INTO "+transfers+" (id, amount) VALUES ($1, $2)", id, t.Amount); err != nil {
			return err
		}
		res, err := my.ExecContext(ctx, "UPDATE "+accounts+" SET balance = balance + ? WHERE id = ? AND balance + ? >= 0", t.Amount, t.MyAccount, t.Amount)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return bank.ErrInsufficientFunds
		}
		_, err = my.ExecContext(ctx, "INSERT INTO "+transfers+" (id, amount) VALUES (?, ?)", id, t.Amount)
		return err
	})
	return id, err
}

// errNothingEnlisted marks a transfer that failed before it enlisted any
// branch (see the work-around in Transfer).
var errNothingEnlisted = errors.New("transfer aborted before enlisting")

// Outcome is how a transfer ended, as its caller saw it.
type Outcome string

// Outcomes of a transfer in the journal.
const (
	InFlight  Outcome = ""          // begun; the process died before Run returned
	Committed Outcome = "committed" // Run returned nil
	Pending   Outcome = "pending"   // ErrCommitPending: committed, phase 2 unfinished
	Aborted   Outcome = "aborted"   // ErrAborted (including insufficient funds)
	Unknown   Outcome = "unknown"   // ErrOutcomeUnknown
)

// OutcomeOf maps Run's error to the journal's outcome.
func OutcomeOf(err error) Outcome {
	switch xa.OutcomeOf(err) {
	case xa.Committed:
		return Committed
	case xa.CommitPending:
		return Pending
	case xa.Unknown:
		return Unknown
	}
	return Aborted
}

// JournalWriter writes one line per transfer event ("begin ID", "end ID
// OUTCOME") so that a parent process can tell, after killing the writer,
// which transfers were begun and what their callers were told. Each line
// is one Write, so a kill never leaves half an event behind a newline.
type JournalWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewJournalWriter writes the journal to w (unbuffered).
func NewJournalWriter(w io.Writer) *JournalWriter { return &JournalWriter{w: w} }

func (j *JournalWriter) line(s string) {
	if j == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	_, _ = io.WriteString(j.w, s)
}

// Begin records that a transfer began.
func (j *JournalWriter) Begin(id string) { j.line("begin " + id + "\n") }

// End records what the transfer's caller was told.
func (j *JournalWriter) End(id string, o Outcome) { j.line("end " + id + " " + string(o) + "\n") }

// Journal is what a journal says: each transfer id begun, and its outcome
// (InFlight when the process died first).
type Journal map[string]Outcome

// ReadJournal parses a journal. A torn last line (no newline: the writer
// died while writing it) is ignored; anything else malformed is an error.
func ReadJournal(r io.Reader) (Journal, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(data), "\n")
	lines = lines[:len(lines)-1] // the last piece is empty or torn
	j := Journal{}
	for _, line := range lines {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "begin":
			if _, ok := j[f[1]]; !ok {
				j[f[1]] = InFlight
			}
		case len(f) == 3 && f[0] == "end" && knownOutcome(Outcome(f[2])):
			j[f[1]] = Outcome(f[2])
		case len(f) >= 1 && (f[0] == "note" || f[0] == "stats"):
			// informational lines
		default:
			return nil, fmt.Errorf("crashcheck: journal: malformed line %q", line)
		}
	}
	return j, nil
}

func knownOutcome(o Outcome) bool {
	switch o {
	case Committed, Pending, Aborted, Unknown:
		return true
	}
	return false
}

// Count returns how many transfers ended with each outcome.
func (j Journal) Count() map[Outcome]int {
	m := map[Outcome]int{}
	for _, o := range j {
		m[o]++
	}
	return m
}

// Stats counts what a workload did.
type Stats struct {
	Begun, Committed, Pending, Aborted, NoFunds, Unknown atomic.Int64
}

// String summarises the stats on one line.
func (s *Stats) String() string {
	return fmt.Sprintf("begun %d committed %d pending %d aborted %d (insufficient funds %d) unknown %d",
		s.Begun.Load(), s.Committed.Load(), s.Pending.Load(), s.Aborted.Load(), s.NoFunds.Load(), s.Unknown.Load())
}

// backoff is how long a worker pauses after a failed transfer.
const backoff = 20 * time.Millisecond

// Workload runs random transfers over several workers.
type Workload struct {
	Bank     *bank.Bank
	Coord    *xa.Coordinator
	Order    Order
	Workers  int // default 1
	Count    int // transfers in all; 0 runs until ctx ends
	Accounts int // accounts on each side, numbered 1..Accounts
	Seed     uint64
	Journal  *JournalWriter // may be nil
	// MaxAmount bounds each transfer's amount (default 100).
	MaxAmount int64
	// Stop, if set, ends the workload when closed, like the end of Run's
	// ctx, but lets the transfers in flight finish (ctx stays theirs): a
	// clean shutdown, as of a replica being rolled.
	Stop <-chan struct{}

	st Stats
}

// Progress returns the live counters of a running (or finished) workload.
func (w *Workload) Progress() *Stats { return &w.st }

// Run runs the workload until Count transfers are done or ctx ends, and
// returns what happened.
func (w *Workload) Run(ctx context.Context) *Stats {
	st := &w.st
	workers := max(w.Workers, 1)
	maxAmt := w.MaxAmount
	if maxAmt <= 0 {
		maxAmt = 100
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(w.Seed, uint64(i)))
			for ctx.Err() == nil && !closed(w.Stop) && (w.Count <= 0 || next.Add(1) <= int64(w.Count)) {
				amt := rng.Int64N(maxAmt) + 1
				if rng.IntN(2) == 0 {
					amt = -amt
				}
				t := bank.Transfer{
					PGAccount: rng.Int64N(int64(w.Accounts)) + 1,
					MyAccount: rng.Int64N(int64(w.Accounts)) + 1,
					Amount:    amt,
				}
				order := w.Order
				if order == Mixed || order == "" {
					order = []Order{PGFirst, MyFirst}[rng.IntN(2)]
				}
				id, err := Transfer(ctx, w.Coord, w.Bank, t, order, func(id string) {
					st.Begun.Add(1)
					w.Journal.Begin(id)
				})
				o := OutcomeOf(err)
				if id != "" {
					w.Journal.End(id, o)
				}
				switch o {
				case Committed:
					st.Committed.Add(1)
				case Pending:
					st.Pending.Add(1)
				case Unknown:
					st.Unknown.Add(1)
				default:
					st.Aborted.Add(1)
					if errors.Is(err, bank.ErrInsufficientFunds) {
						st.NoFunds.Add(1)
						continue
					}
					// A database down or unreachable: back off a little
					// rather than spin through failing transactions.
					select {
					case <-ctx.Done():
					case <-w.Stop:
					case <-time.After(backoff):
					}
				}
			}
		}()
	}
	wg.Wait()
	return st
}

// closed reports whether ch is closed (never, for nil).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
