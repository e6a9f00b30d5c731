package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/fakeres"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// TestModelAtomicity is a property-based model test of the coordinator and
// recovery against in-memory fault-injecting resources (internal/fakeres):
// rapid draws a few transactions over 2-3 resources, which of them each
// enlists and in what order, read-only votes, refused and in-doubt
// prepares, lost answers to prepare, commit and one-phase commit, busy
// branches, random delays, and one coordinator crash at any protocol step
// of any transaction. After the crash (or the last transaction) a new
// coordinator starts on the same log and recovery runs to the end; then
// every transaction must be all-or-nothing across its writing branches,
// agree with what its caller was told and with the log, and leave nothing
// prepared. It complements the real-server runs; it is no evidence of how
// databases behave.
func TestModelAtomicity(t *testing.T) {
	var runs, crashes, txns atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		c, n := runModel(rt)
		runs.Add(1)
		txns.Add(int64(n))
		if c {
			crashes.Add(1)
		}
	})
	var res crashcheck.Result
	if t.Failed() {
		res.Violations = []string{"model test failed"}
	}
	results.addN("model (rapid): coordinator + recovery, random faults and one crash", "in-memory fakes",
		int(runs.Load()), int(crashes.Load()), int(txns.Load()), res)
}

var modelSteps = []xa.Step{
	xa.StepBegin, xa.StepEnlisted, xa.StepWorkDone, xa.StepPrepared, xa.StepAllPrepared, xa.StepDecided,
	xa.StepCommitted, xa.StepAllCommitted, xa.StepEnded, xa.StepRolledBack, xa.StepOnePhaseCommit, "none",
}

// modelTx is what the model remembers of one transaction.
type modelTx struct {
	gtrid    drivers.GlobalID
	branches []modelBranch
	outcome  xa.Outcome
	ran      bool // Run returned (it did not die with the coordinator)
	enlisted int  // branches enlisted so far
}

// runGuarded is coord.Run with a work-around: xa's Run panics (sync:
// negative WaitGroup counter, from parallel(0) in rollbackBranches) when
// the callback fails before any branch was enlisted. Such a transaction
// touched nothing; it counts as aborted. Any other panic is re-raised.
func runGuarded(ctx context.Context, coord *xa.Coordinator, m *modelTx, fn func(context.Context, *xa.Tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if m.enlisted > 0 {
				panic(p)
			}
			err = &xa.Error{Outcome: xa.Aborted, Op: xa.OpWork, Err: fmt.Errorf("no branch enlisted; coordinator panicked: %v", p)}
		}
	}()
	return coord.Run(ctx, fn)
}

type modelBranch struct {
	res      int // index of the resource
	num      int // branch number
	readOnly bool
}

// crashed is the "process is dead" switch shared by the wrappers: once set,
// every operation of the old coordinator fails without effect.
type crashSwitch struct{ atomic.Bool }

var errDead = errors.New("model: the coordinator process is dead")

// faults are lost answers keyed by XID: the operation takes effect but the
// caller gets ErrInDoubt, once.
type faults struct {
	mu   sync.Mutex
	lose map[string]bool // op + " " + gid
	rng  *rand.Rand
}

func (f *faults) take(op string, x drivers.XID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := op + " " + x.GID()
	if f.lose[k] {
		delete(f.lose, k)
		return true
	}
	return false
}

// jitter sleeps up to 300µs, so goroutines interleave differently.
func (f *faults) jitter() {
	f.mu.Lock()
	d := time.Duration(f.rng.IntN(300)) * time.Microsecond
	f.mu.Unlock()
	time.Sleep(d)
}

type modelRes struct {
	*fakeres.Resource
	dead *crashSwitch
	f    *faults
}

func (r *modelRes) err(op string, x drivers.XID) error {
	return drivers.NewError(r.Name(), op, x, drivers.ErrInDoubt, errDead)
}

func (r *modelRes) Begin(ctx context.Context, x drivers.XID) (drivers.Branch, error) {
	r.f.jitter()
	if r.dead.Load() {
		return nil, r.err("begin", x)
	}
	b, err := r.Resource.Begin(ctx, x)
	if err != nil {
		return nil, err
	}
	return &modelBranch2{Branch: b, r: r}, nil
}

func (r *modelRes) CommitPrepared(ctx context.Context, x drivers.XID) error {
	r.f.jitter()
	if r.dead.Load() {
		return r.err("commit-prepared", x)
	}
	return r.Resource.CommitPrepared(ctx, x)
}

func (r *modelRes) RollbackPrepared(ctx context.Context, x drivers.XID) error {
	r.f.jitter()
	if r.dead.Load() {
		return r.err("rollback-prepared", x)
	}
	return r.Resource.RollbackPrepared(ctx, x)
}

type modelBranch2 struct {
	drivers.Branch
	r *modelRes
}

func (b *modelBranch2) do(op string, f func() error) error {
	b.r.f.jitter()
	if b.r.dead.Load() {
		return b.r.err(op, b.XID())
	}
	err := f()
	if err == nil && b.r.f.take(op, b.XID()) {
		return drivers.NewError(b.r.Name(), op, b.XID(), drivers.ErrInDoubt, errors.New("model: answer lost"))
	}
	return err
}

func (b *modelBranch2) Prepare(ctx context.Context) (drivers.Vote, error) {
	var v drivers.Vote
	err := b.do("prepare", func() error {
		var err error
		v, err = b.Branch.Prepare(ctx)
		return err
	})
	return v, err
}

func (b *modelBranch2) Commit(ctx context.Context) error {
	return b.do("commit", func() error { return b.Branch.Commit(ctx) })
}

func (b *modelBranch2) Rollback(ctx context.Context) error {
	return b.do("rollback", func() error { return b.Branch.Rollback(ctx) })
}

func (b *modelBranch2) CommitOnePhase(ctx context.Context) error {
	return b.do("commit-one-phase", func() error { return b.Branch.CommitOnePhase(ctx) })
}

// modelLog is the decision log of a process that may die: once dead, writes
// fail without effect.
type modelLog struct {
	*decisionlog.FileLog
	dead *crashSwitch
}

func (l *modelLog) Commit(ctx context.Context, d decisionlog.Decision) error {
	if l.dead.Load() {
		return fmt.Errorf("%w: %w", decisionlog.ErrLogFailed, errDead)
	}
	return l.FileLog.Commit(ctx, d)
}

func (l *modelLog) Abort(ctx context.Context, a decisionlog.Action) error {
	if l.dead.Load() {
		return fmt.Errorf("%w: %w", decisionlog.ErrLogFailed, errDead)
	}
	return l.FileLog.Abort(ctx, a)
}

func (l *modelLog) Record(ctx context.Context, a decisionlog.Action) error {
	if l.dead.Load() {
		return fmt.Errorf("%w: %w", decisionlog.ErrLogFailed, errDead)
	}
	return l.FileLog.Record(ctx, a)
}

func (l *modelLog) End(g drivers.GlobalID) error {
	if l.dead.Load() {
		return nil
	}
	return l.FileLog.End(g)
}

// runModel runs one drawn scenario and reports whether the coordinator
// crashed and how many transactions it began.
func runModel(rt *rapid.T) (crashed bool, began int) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "xab-model-")
	if err != nil {
		rt.Fatal(err)
	}
	defer os.RemoveAll(dir)

	nres := rapid.IntRange(2, 3).Draw(rt, "resources")
	dead := &crashSwitch{}
	f := &faults{lose: map[string]bool{}, rng: rand.New(rand.NewPCG(rapid.Uint64().Draw(rt, "seed"), 0))}
	fakes := make([]*fakeres.Resource, nres)
	wrapped := make([]drivers.Resource, nres)
	for i := range fakes {
		fakes[i] = fakeres.New(fmt.Sprintf("r%d", i))
		fakes[i].AddForeign(fmt.Sprintf("foreign-%d", i))
		wrapped[i] = &modelRes{Resource: fakes[i], dead: dead, f: f}
	}
	ntx := rapid.IntRange(1, 5).Draw(rt, "transactions")
	crashStep := rapid.SampledFrom(modelSteps).Draw(rt, "crash step")
	crashTx := rapid.IntRange(0, ntx-1).Draw(rt, "crash transaction")
	crashBranch := rapid.IntRange(-1, nres-1).Draw(rt, "crash branch")

	fl, err := decisionlog.OpenFileLog(dir, decisionlog.FileLogOptions{})
	if err != nil {
		rt.Fatal(err)
	}
	var mu sync.Mutex
	index := map[drivers.GlobalID]int{}
	coord, err := xa.New(ctx, xa.Config{
		NodeID: "model", Log: &modelLog{FileLog: fl, dead: dead}, Resources: wrapped,
		Timeout: 5 * time.Second, Phase2Timeout: 50 * time.Millisecond, RollbackTimeout: 50 * time.Millisecond,
		Hook: func(s xa.Step, info xa.StepInfo) {
			mu.Lock()
			if s == xa.StepBegin {
				index[info.GTRID] = len(index)
			}
			i, ok := index[info.GTRID]
			mu.Unlock()
			if ok && i == crashTx && s == crashStep && (crashBranch < 0 || info.Branch < 0 || info.Branch == crashBranch) {
				dead.Store(true)
			}
		},
	})
	if err != nil {
		rt.Fatal(err)
	}

	var txs []*modelTx
	for i := 0; i < ntx && !dead.Load(); i++ {
		// Which resources, in which order; which of them only read.
		perm := rapid.Permutation(seq(nres)).Draw(rt, fmt.Sprintf("tx%d order", i))
		n := rapid.IntRange(1, nres).Draw(rt, fmt.Sprintf("tx%d branches", i))
		m := &modelTx{}
		for k, ri := range perm[:n] {
			m.branches = append(m.branches, modelBranch{res: ri, num: k, readOnly: rapid.IntRange(0, 3).Draw(rt, fmt.Sprintf("tx%d r%d read-only", i, ri)) == 0})
		}
		// Faults on this transaction's calls.
		for _, b := range m.branches {
			switch rapid.IntRange(0, 19).Draw(rt, fmt.Sprintf("tx%d r%d prepare fault", i, b.res)) {
			case 0:
				fakes[b.res].FailNext("prepare", drivers.ErrRefused)
			case 1:
				fakes[b.res].FailNext("prepare", drivers.ErrInDoubt) // no effect, answer lost
			case 2:
				fakes[b.res].FailNext("prepare", drivers.ErrRetryable)
			}
			switch rapid.IntRange(0, 14).Draw(rt, fmt.Sprintf("tx%d r%d commit fault", i, b.res)) {
			case 0:
				fakes[b.res].FailNext("commit", drivers.ErrBusy)
			case 1:
				fakes[b.res].FailNext("commit", drivers.ErrInDoubt)
			case 2:
				fakes[b.res].FailNext("commit-one-phase", drivers.ErrRefused)
			}
		}
		// Which branch (if any: values past n mean none) loses an answer.
		lostPrepare := rapid.IntRange(0, 4*n).Draw(rt, fmt.Sprintf("tx%d lost prepare answer", i))
		lostCommit := rapid.IntRange(0, 3*n).Draw(rt, fmt.Sprintf("tx%d lost commit answer", i))
		failWork := rapid.IntRange(0, 9).Draw(rt, fmt.Sprintf("tx%d work fails", i)) == 0
		txs = append(txs, m)
		err := runGuarded(ctx, coord, m, func(ctx context.Context, tx *xa.Tx) error {
			m.gtrid = tx.GlobalID()
			for k, b := range m.branches {
				fakes[b.res].ReadOnly = b.readOnly
				x := drivers.XID{Global: m.gtrid, Branch: uint8(k)}
				f.mu.Lock()
				if k == lostPrepare {
					f.lose["prepare "+x.GID()] = true
				}
				if k == lostCommit {
					f.lose["commit "+x.GID()] = true
					f.lose["commit-one-phase "+x.GID()] = true
				}
				f.mu.Unlock()
				if _, err := tx.Enlist(ctx, wrapped[b.res]); err != nil {
					return err
				}
				m.enlisted++
			}
			if failWork {
				return errors.New("model: the work failed")
			}
			return nil
		})
		m.ran, m.outcome = true, xa.OutcomeOf(err)
	}
	// The process ends: killed at the crash point, or after its work.
	crashed = dead.Load()
	for _, m := range txs {
		if !m.gtrid.IsZero() {
			began++
		}
	}
	dead.Store(true)
	_ = coord.Close()
	if err := fl.Close(); err != nil {
		rt.Fatal(err)
	}

	// Restart: the databases drop the dead sessions' unprepared branches;
	// a new coordinator resumes the log; recovery settles the rest, with a
	// busy branch or two of its own to get through.
	for _, r := range fakes {
		r.Crash()
		if rapid.Bool().Draw(rt, r.Name()+" busy at recovery") {
			r.FailNext("commit-prepared", drivers.ErrBusy)
			r.FailNext("rollback-prepared", drivers.ErrBusy)
		}
	}
	plain := make([]drivers.Resource, nres)
	for i, r := range fakes {
		plain[i] = r
	}
	fl2, err := decisionlog.OpenFileLog(dir, decisionlog.FileLogOptions{})
	if err != nil {
		rt.Fatal(err)
	}
	defer fl2.Close()
	// Either a new coordinator resumes the log with recovery beside it, or
	// recovery runs alone (an operator's `xabridge recover`).
	var active func(drivers.GlobalID) bool
	closeCoord := func() error { return nil }
	if rapid.Bool().Draw(rt, "restart the coordinator") {
		coord2, err := xa.New(ctx, xa.Config{NodeID: "model", Log: fl2, Resources: plain})
		if err != nil {
			rt.Fatal(err)
		}
		active, closeCoord = coord2.Active, coord2.Close
	}
	zero := time.Duration(0)
	rec, err := recovery.New(recovery.Config{NodeID: "model", Log: fl2, Resources: plain, Active: active, MinAge: &zero, Settle: -1})
	if err != nil {
		rt.Fatal(err)
	}
	settled := false
	for pass := 0; pass < 500 && !settled; pass++ {
		rep := rec.Pass(ctx, false)
		settled = rep.Remaining() == 0 && len(rep.ScanErrors) == 0 && len(fl2.Pending()) == 0
		if !settled {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if err := closeCoord(); err != nil {
		rt.Fatal(err)
	}
	if !settled {
		rt.Fatalf("recovery did not settle: pending %d", len(fl2.Pending()))
	}

	for i, m := range txs {
		if m.gtrid.IsZero() {
			continue
		}
		committed, writers := 0, 0
		for k, b := range m.branches {
			st := fakes[b.res].State(drivers.XID{Global: m.gtrid, Branch: uint8(k)})
			switch st {
			case "prepared", "active":
				rt.Fatalf("tx%d branch %d on r%d left %s", i, k, b.res, st)
			case "committed":
				committed++
			}
			if st != "none" { // read-only votes finish without a state
				writers++
			}
		}
		if committed != 0 && committed != writers {
			rt.Fatalf("tx%d (%s): %d of %d writing branches committed", i, m.gtrid, committed, writers)
		}
		if m.ran {
			switch m.outcome {
			case xa.Committed, xa.CommitPending:
				if committed != writers {
					rt.Fatalf("tx%d reported %s but %d of %d branches committed", i, m.outcome, committed, writers)
				}
			case xa.Aborted:
				if committed != 0 {
					rt.Fatalf("tx%d reported aborted but %d branches committed", i, committed)
				}
			}
		}
		if e, ok := fl2.Lookup(m.gtrid); ok {
			switch e.State {
			case decisionlog.StateCommitted, decisionlog.StateDone:
				if committed != writers {
					rt.Fatalf("tx%d: log says %s, %d of %d branches committed", i, e.State, committed, writers)
				}
			case decisionlog.StateAborted:
				if committed != 0 {
					rt.Fatalf("tx%d: log says aborted, %d branches committed", i, committed)
				}
			}
		}
	}
	for _, r := range fakes {
		if len(r.Foreign()) != 1 || len(r.PreparedXIDs()) != 0 {
			rt.Fatalf("%s: foreign %v, prepared %v", r.Name(), r.Foreign(), r.PreparedXIDs())
		}
	}
	return crashed, began
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
