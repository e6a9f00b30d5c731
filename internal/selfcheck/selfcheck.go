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
	"github.com/xabridge/xabridge/internal/storeopt"
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
	// Store, if set, puts the children on a shared decision store instead
	// of LogDir: each runs as a replica (package replica) holding node
	// NodeID's lease. Its Schema defaults to PREFIX_store, so that the
	// check's rows stay apart from any coordinator's.
	Store storeopt.Options
	// LeaseTTL is the children's lease TTL with a store (default
	// DefaultStoreLeaseTTL): after a kill, recovery waits for it to expire.
	LeaseTTL time.Duration
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
	if err := o.Store.Validate(); err != nil {
		return err
	}
	if o.Store.Enabled() && o.LogDir != "" {
		return errors.New("--store and --log-dir exclude each other")
	}
	if !o.Store.Enabled() && o.LeaseTTL != 0 {
		return errors.New("--lease-ttl goes with --store")
	}
	if o.LeaseTTL != 0 && (o.LeaseTTL < 500*time.Millisecond || o.LeaseTTL > time.Minute) {
		return errors.New("--lease-ttl must be between 500ms and 1m")
	}
	if o.Store.Enabled() && o.NodeID == operatorNode {
		return fmt.Errorf("--node-id %s is the check's own recovery node id on the store", operatorNode)
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
func Run(ctx context.Context, out, errw io.Writer, o Options) error {
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
	var st *storeCheck
	if o.Store.Enabled() {
		if st, err = openStoreCheck(ctx, &o); err != nil {
			return err
		}
		defer st.close()
	} else if o.LogDir == "" {
		dir, err := os.MkdirTemp("", "xabridge-selfcheck-")
		if err != nil {
			return err
		}
		o.LogDir = dir
		defer os.RemoveAll(o.LogDir)
	}
	seed := o.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	fmt.Fprintf(out, "xabridge selfcheck: %s of random SIGKILLs against postgres %s and mysql %s, tables %s_*, node %s, seed %d\n",
		o.Duration, redact.URL(o.PGURL), redact.URL(o.MyURL), o.Prefix, o.NodeID, seed)
	if st != nil {
		fmt.Fprintf(out, "decisions in the shared store %s, schema %s, lease TTL %s: the coordinators run as replicas\n",
			o.Store.Redacted(), o.Store.Schema, o.LeaseTTL)
	}
	c := &checker{o: &o, st: st, b: b, rng: rand.New(rand.NewPCG(seed, 0x5e1f)), total: int64(o.Accounts) * o.Balance * 2,
		points: append(crashcheck.MatrixPoints(), "after-all-prepared", "after-end")}
	start := time.Now()
	stopBar := startBar(errw, o.Progress, o.Duration, start, c.progress)
	for n := 0; time.Since(start) < o.Duration && ctx.Err() == nil; n++ {
		if err := c.round(ctx, n); err != nil {
			stopBar()
			return err
		}
	}
	stopBar()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.tot.verdict(out, &o, time.Since(start)); err != nil {
		return err
	}
	fmt.Fprintln(out, "ok: every invariant held after every kill")
	if !o.Keep {
		if err := dropTables(ctx, b, o.Prefix); err != nil {
			return err
		}
		if st != nil {
			if err := st.drop(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// checker is one check's state across its rounds.
type checker struct {
	o      *Options
	st     *storeCheck // nil with a file log
	b      *bank.Bank
	rng    *rand.Rand
	total  int64    // the money in both databases
	points []string // the crash points to choose from
	mu     sync.Mutex
	tot    totals
}

// round runs child n and kills it: at a random moment (even rounds) or at
// a random protocol step; then it recovers, by a restarted coordinator or
// by recovery alone, and checks the invariants.
func (c *checker) round(ctx context.Context, n int) error {
	crash, nth, killAfter := "", 1, time.Duration(0)
	if n%2 == 0 {
		killAfter = time.Duration(100+c.rng.IntN(900)) * time.Millisecond
	} else {
		crash, nth = c.points[c.rng.IntN(len(c.points))], 1+c.rng.IntN(30)
	}
	j, killed, err := c.o.runChild(ctx, crash, nth, killAfter, c.rng.Uint64())
	if err != nil {
		return err
	}
	var rr crashcheck.RecoverResult
	if c.st != nil {
		rr.Entries, err = c.st.recoverAfterKill(ctx, c.b, n%4 >= 2)
	} else {
		rr, err = crashcheck.RecoverAfterCrash(ctx, crashcheck.RecoverConfig{
			Bank: c.b, LogDir: c.o.LogDir, Node: c.o.NodeID, RecoveryOnly: n%4 >= 2, Timeout: 2 * time.Minute,
		})
	}
	if err != nil {
		return fmt.Errorf("selfcheck: recovery after kill %d: %w", c.tot.kills+1, err)
	}
	res, err := crashcheck.Check(ctx, c.b, crashcheck.Expect{Node: c.o.NodeID, Total: c.total, Journal: j, Entries: rr.Entries, LogCompacted: rr.Compacted})
	if err != nil {
		return fmt.Errorf("selfcheck: checking the invariants: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if killed {
		c.tot.kills++
	}
	c.tot.transactions += len(j)
	c.tot.violations += len(res.Violations)
	c.tot.viol = append(c.tot.viol, res.Violations...)
	c.tot.stranded = res.Stranded
	c.tot.transfers = res.Transfers
	return nil
}

// progress describes the check so far, for the progress bar.
func (c *checker) progress() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("kills %d, transactions %d, violations %d", c.tot.kills, c.tot.transactions, c.tot.violations)
}

// verdict prints the totals and fails the check on a violation, a
// stranded branch, or when no child was killed.
func (t *totals) verdict(out io.Writer, o *Options, elapsed time.Duration) error {
	fmt.Fprintf(out, "kills         %d\ntransactions  %d\ntransfers     %d committed (in both databases)\nviolations    %d\nstranded      %d prepared branches left\nelapsed       %s\n",
		t.kills, t.transactions, t.transfers, t.violations, t.stranded, elapsed.Round(time.Second))
	for _, v := range t.viol {
		fmt.Fprintln(out, "  violation:", v)
	}
	switch {
	case t.violations > 0:
		fmt.Fprintf(out, "FAIL: atomicity violated; tables %s_* kept for inspection\n", o.Prefix)
		return fmt.Errorf("selfcheck found %d violation(s)", t.violations)
	case t.stranded > 0:
		fmt.Fprintf(out, "FAIL: prepared branches left behind; tables %s_* kept for inspection\n", o.Prefix)
		return fmt.Errorf("%w: %d prepared branch(es) of node %s", ErrStranded, t.stranded, o.NodeID)
	case t.kills == 0:
		return errors.New("selfcheck: no child was killed; run it longer (--duration)")
	}
	return nil
}
