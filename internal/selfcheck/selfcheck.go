// Package selfcheck proves atomicity on a user's own databases: it runs
// the bank-transfer workload in child processes, kills each with SIGKILL at
// a random moment or at a random step of the two-phase commit protocol,
// recovers, and checks the invariants after every kill. It is what
// `xabridge selfcheck` runs.
package selfcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/redact"
)

// Options configure a check; the CLI flag of each field is named in
// Validate's errors.
type Options struct {
	PGURL, MyURL string // the databases
	Prefix       string // table prefix (--table-prefix)
	Accounts     int    // accounts on each database
	Balance      int64  // starting balance of each account
	NodeID       string // node id of the check's transactions
	LogDir       string // decision log directory; "": a fresh temporary one
	Duration     time.Duration
	Workers      int    // concurrent transfers in each child
	Seed         uint64 // 0: from the clock
	Progress     bool   // draw a progress bar on the error writer
	Keep         bool   // keep the tables afterwards
	// Child is the command that starts a workload child, which must call
	// RunChild; default: this executable with the arguments
	// "selfcheck child".
	Child []string
}

// ErrStranded is returned when prepared branches of the check's node were
// left behind.
var ErrStranded = errors.New("in-doubt branches remain")

// Validate checks the options; every error is a usage error.
func (o *Options) Validate() error {
	if o.PGURL == "" || o.MyURL == "" {
		return errors.New("both --pg and --mysql are needed (or XABRIDGE_PG and XABRIDGE_MYSQL)")
	}
	if o.Duration <= 0 || o.Workers < 1 || o.Accounts < 1 || o.Balance < 1 {
		return errors.New("--duration must be positive, --workers, --accounts and --balance at least 1")
	}
	if err := drivers.ValidateNodeID(o.NodeID); err != nil {
		return fmt.Errorf("--node-id: %w", err)
	}
	var b bank.Bank
	if err := b.SetPrefix(o.Prefix); err != nil {
		return fmt.Errorf("--table-prefix: %w", err)
	}
	return nil
}

// totals is what the check counted.
type totals struct {
	kills, transactions, violations, stranded int
	transfers                                 int
	viol                                      []string
}

// Run runs the check: children killed at random, recovery and the
// invariant check after every kill, a summary on out and a progress bar
// on errw (Options.Progress). It fails with a violation, with ErrStranded
// when prepared branches were left behind, or when no child was killed.
func Run(ctx context.Context, out, errw io.Writer, o Options) (err error) {
	if err := o.Validate(); err != nil {
		return err
	}
	if len(o.Child) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("selfcheck: cannot find its own executable to start children: %w", err)
		}
		o.Child = []string{exe, "selfcheck", "child"}
	}
	b, err := bank.Open(ctx, o.PGURL, o.MyURL, 4)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.SetPrefix(o.Prefix); err != nil {
		return err
	}
	if err := claimTables(ctx, b, o.Prefix); err != nil {
		return err
	}
	if err := b.Setup(ctx, o.Accounts, o.Balance); err != nil {
		return err
	}
	if o.LogDir == "" {
		if o.LogDir, err = os.MkdirTemp("", "xabridge-selfcheck-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.LogDir)
	}
	seed := o.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(seed, 0x5e1f))
	total := int64(o.Accounts) * o.Balance * 2
	fmt.Fprintf(out, "xabridge selfcheck: %s of random SIGKILLs against postgres %s and mysql %s, tables %s_*, node %s, seed %d\n",
		o.Duration, redact.URL(o.PGURL), redact.URL(o.MyURL), o.Prefix, o.NodeID, seed)

	var tot totals
	var mu sync.Mutex
	start := time.Now()
	stopBar := startBar(errw, o.Progress, o.Duration, start, func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("kills %d, transactions %d, violations %d", tot.kills, tot.transactions, tot.violations)
	})
	points := append(crashcheck.MatrixPoints(), "after-all-prepared", "after-end")
	for round := 0; time.Since(start) < o.Duration && ctx.Err() == nil; round++ {
		crash, nth, killAfter := "", 1, time.Duration(0)
		if round%2 == 0 {
			killAfter = time.Duration(100+rng.IntN(900)) * time.Millisecond
		} else {
			crash, nth = points[rng.IntN(len(points))], 1+rng.IntN(30)
		}
		j, killed, err := o.runChild(ctx, crash, nth, killAfter, rng.Uint64())
		if err != nil {
			stopBar()
			return err
		}
		rr, err := crashcheck.RecoverAfterCrash(ctx, crashcheck.RecoverConfig{
			Bank: b, LogDir: o.LogDir, Node: o.NodeID, RecoveryOnly: round%4 >= 2, Timeout: 2 * time.Minute,
		})
		if err != nil {
			stopBar()
			return fmt.Errorf("selfcheck: recovery after kill %d: %w", tot.kills+1, err)
		}
		res, err := crashcheck.Check(ctx, b, crashcheck.Expect{Node: o.NodeID, Total: total, Journal: j, Entries: rr.Entries, LogCompacted: rr.Compacted})
		if err != nil {
			stopBar()
			return fmt.Errorf("selfcheck: checking the invariants: %w", err)
		}
		mu.Lock()
		if killed {
			tot.kills++
		}
		tot.transactions += len(j)
		tot.violations += len(res.Violations)
		tot.viol = append(tot.viol, res.Violations...)
		tot.stranded = res.Stranded
		tot.transfers = res.Transfers
		mu.Unlock()
	}
	stopBar()
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Fprintf(out, "kills         %d\ntransactions  %d\ntransfers     %d committed (in both databases)\nviolations    %d\nstranded      %d prepared branches left\nelapsed       %s\n",
		tot.kills, tot.transactions, tot.transfers, tot.violations, tot.stranded, time.Since(start).Round(time.Second))
	for _, v := range tot.viol {
		fmt.Fprintln(out, "  violation:", v)
	}
	switch {
	case tot.violations > 0:
		fmt.Fprintf(out, "FAIL: atomicity violated; tables %s_* kept for inspection\n", o.Prefix)
		return fmt.Errorf("selfcheck found %d violation(s)", tot.violations)
	case tot.stranded > 0:
		fmt.Fprintf(out, "FAIL: prepared branches left behind; tables %s_* kept for inspection\n", o.Prefix)
		return fmt.Errorf("%w: %d prepared branch(es) of node %s", ErrStranded, tot.stranded, o.NodeID)
	case tot.kills == 0:
		return errors.New("selfcheck: no child was killed; run it longer (--duration)")
	}
	fmt.Fprintln(out, "ok: every invariant held after every kill")
	if !o.Keep {
		if err := dropTables(ctx, b, o.Prefix); err != nil {
			return err
		}
	}
	return nil
}
