// Package bench measures cross-database transfers through two-phase commit
// against the same statements as two independent local commits, side by
// side in one run (docs/PERFORMANCE.md), and checks the invariants after.
// It is what `xabridge bench` runs.
package bench

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/storeopt"
)

// Mode is one way of running the transfer.
type Mode struct {
	Name  string
	About string
	// atomic: through a coordinator; async: AsyncPhase2.
	atomic, async bool
	// keeper names the participant that keeps the decision ("pg" or
	// "mysql"), or is empty for the file log.
	keeper string
	// store says where the shared decision store (decisionlog/pgstore)
	// lives: storeSeparate (Options.StoreURL) or storeOwn (the PostgreSQL
	// participant's database, on its pool); empty for the file log.
	store string
}

// Where a store mode keeps its decisions.
const (
	storeSeparate = "separate"
	storeOwn      = "own"
)

// modes are all the modes, in the order they run at each level.
var modes = []Mode{
	{Name: "baseline", About: "the same statements as two independent local commits (not atomic)"},
	{Name: "xa", About: "two-phase commit, file decision log with group commit", atomic: true},
	{Name: "xa-async", About: "xa, answering once the decision is durable; phase 2 in the background", atomic: true, async: true},
	{Name: "xa-dip", About: "decision in the PostgreSQL participant's own commit: it never prepares, no log fsync", atomic: true, keeper: "pg"},
	{Name: "xa-dip-async", About: "xa-dip with asynchronous phase 2", atomic: true, keeper: "pg", async: true},
	{Name: "xa-dipmy", About: "decision in the MySQL/MariaDB participant's own local commit: it runs no XA, no log fsync", atomic: true, keeper: "mysql"},
	{Name: "xa-dipmy-async", About: "xa-dipmy with asynchronous phase 2", atomic: true, keeper: "mysql", async: true},
	{Name: "xa-store", About: "two-phase commit, decisions in the shared PostgreSQL store (decisionlog/pgstore) in its own database (--store)", atomic: true, store: storeSeparate},
	{Name: "xa-store-own", About: "xa-store with the store's tables in the PostgreSQL participant's database, on its pool", atomic: true, store: storeOwn},
}

// ModeNames names every mode, in the order they run.
func ModeNames() []string {
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = m.Name
	}
	return names
}

// Options configure a run; the CLI flag of each field is named in
// Validate's errors.
type Options struct {
	PGURL, MyURL string // the databases
	Prefix       string // table prefix (--table-prefix)
	LogDir       string // directory of the decision logs, one per mode
	NodeID       string // prefix of the coordinator node ids (NODE-MODE)
	Clients      []int  // concurrency levels
	Modes        []string
	Duration     time.Duration // measured time per mode and level
	Warmup       time.Duration // unmeasured time before a mode's first round at a level
	Rounds       int           // rounds per level, the modes taking turns
	HotRows      int           // > 0: every transfer picks among the first N accounts
	CommitDelay  time.Duration // decisionlog.FileLogOptions.CommitDelay and pgstore.Options.CommitDelay
	// StoreURL is the PostgreSQL database of the xa-store mode's shared
	// decision store (--store). Empty: the database named after the --pg
	// database with "_store" appended (DefaultStoreURL), on the same
	// server, created if missing.
	StoreURL string
	// StartAt, if set, is when the measurement starts (--start-at): the
	// run waits for it after its setup, so that processes started together
	// measure the same window. Reached after the setup: an error.
	StartAt    time.Time
	Progress   bool   // draw a progress bar on the error writer
	CPUProfile string // write a pprof CPU profile here
	// Command is the command line, recorded in the report with its
	// passwords masked.
	Command []string
}

// ModesHelp is one line per mode: its name and what it measures.
func ModesHelp() string {
	var b strings.Builder
	width := 0
	for _, m := range modes {
		width = max(width, len(m.Name))
	}
	for _, m := range modes {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, m.Name, m.About)
	}
	return b.String()
}

// MaxClients bounds a level: every client holds a connection on each
// database, and phase 2 in the background holds more.
const MaxClients = 1000

// Validate checks the options; every error is a usage error.
func (o *Options) Validate() error {
	if o.PGURL == "" || o.MyURL == "" {
		return errors.New("both --pg and --mysql are needed (or XABRIDGE_PG and XABRIDGE_MYSQL; scripts/devdb env prints them)")
	}
	if len(o.Clients) == 0 {
		return errors.New("--clients needs at least one level")
	}
	for _, n := range o.Clients {
		if n < 1 || n > MaxClients {
			return fmt.Errorf("--clients: %d is not between 1 and %d", n, MaxClients)
		}
	}
	if len(o.Modes) == 0 {
		return fmt.Errorf("--modes needs at least one mode (%s)", strings.Join(ModeNames(), ", "))
	}
	seen := map[string]bool{}
	for _, m := range o.Modes {
		if !slices.Contains(ModeNames(), m) {
			return fmt.Errorf("--modes: unknown mode %q (known: %s)", m, strings.Join(ModeNames(), ", "))
		}
		if seen[m] {
			return fmt.Errorf("--modes: %q is given twice", m)
		}
		seen[m] = true
	}
	if o.Duration <= 0 || o.Warmup < 0 {
		return errors.New("--duration must be > 0 and --warmup >= 0")
	}
	if o.Rounds < 1 || o.Duration/time.Duration(max(o.Rounds, 1)) < 50*time.Millisecond {
		return errors.New("--rounds must be >= 1, with --duration / --rounds at least 50ms")
	}
	if o.HotRows < 0 {
		return errors.New("--hot-rows must be >= 0")
	}
	if o.CommitDelay < 0 || o.CommitDelay > time.Second {
		return errors.New("--commit-delay must be between 0 and 1s")
	}
	for _, m := range o.selected() {
		if m.atomic {
			if err := drivers.ValidateNodeID(o.NodeID + "-" + m.Name); err != nil {
				return fmt.Errorf("--node-id %q: node id %q for mode %s: %v", o.NodeID, o.NodeID+"-"+m.Name, m.Name, err)
			}
		}
	}
	if o.StoreURL != "" {
		if err := (storeopt.Options{URL: o.StoreURL}).Validate(); err != nil {
			return err
		}
	} else if o.needsStore(storeSeparate) {
		if _, err := DefaultStoreURL(o.PGURL); err != nil {
			return err
		}
	}
	var b bank.Bank
	if err := b.SetPrefix(o.Prefix); err != nil {
		return fmt.Errorf("--table-prefix: %w", err)
	}
	return nil
}

// selected returns the chosen modes in their canonical order.
func (o *Options) selected() []Mode {
	var out []Mode
	for _, m := range modes {
		if slices.Contains(o.Modes, m.Name) {
			out = append(out, m)
		}
	}
	return out
}
