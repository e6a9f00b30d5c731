package decisionlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// flT0 is the fake clock's start; every test gtrid has a deadline an hour later
// unless a test says otherwise.
var flT0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

type flClock struct{ ns atomic.Int64 }

func newFLClock(t time.Time) *flClock {
	c := &flClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *flClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *flClock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *flClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// gid returns a test gtrid with the given sequence number and deadline.
func flGID(seq uint32, deadline time.Time) drivers.GlobalID {
	return drivers.GlobalID{Node: "node-1", Begin: deadline.Add(-2 * time.Hour), Seq: seq, Deadline: deadline}
}

// g returns a test gtrid with the default deadline (flT0 + 1h).
func flG(seq uint32) drivers.GlobalID { return flGID(seq, flT0.Add(time.Hour)) }

func flDecision(gt drivers.GlobalID, resources ...string) Decision {
	d := Decision{GTRID: gt}
	for i, r := range resources {
		d.Participants = append(d.Participants, Participant{Resource: r, Branch: uint8(i)})
	}
	return d
}

// openFL opens a writable log with the fake clock and closes it at cleanup.
func openFL(t testing.TB, dir string, clock *flClock, fa *flFaults) *FileLog {
	t.Helper()
	opts := FileLogOptions{Now: clock.Now}
	if fa != nil {
		opts.hooks = fa.hooks()
	}
	l, err := OpenFileLog(dir, opts)
	if err != nil {
		t.Fatalf("OpenFileLog(%s): %v", dir, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func flCommit(t testing.TB, l *FileLog, d Decision) {
	t.Helper()
	if err := l.Commit(context.Background(), d); err != nil {
		t.Fatalf("Commit(%s): %v", d.GTRID, err)
	}
}

func flClose(t testing.TB, l *FileLog) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func flAsync(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// flWaitQueued waits until at least n requests wait in the writer's queue.
func flWaitQueued(t *testing.T, l *FileLog, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.qmu.Lock()
		q := len(l.queue)
		l.qmu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue has %d requests, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// flFaults injects failures and delays into the files a FileLog appends to.
type flFaults struct {
	mu        sync.Mutex
	writeErr  error // the next write writes writeN bytes, then fails with it
	writeN    int
	syncErr   error // the next fsync fails with it
	syncDelay time.Duration
	gate      chan struct{} // the next fsync waits until it is closed
	atGate    chan struct{} // closed when that fsync reaches the gate
	wrapped   int           // files wrapped so far
	onlyFile  int           // if > 0, flFaults apply only to the onlyFile-th file wrapped
}

func (fa *flFaults) hooks() *fileLogHooks {
	return &fileLogHooks{wrapFile: func(f logFile) logFile {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		fa.wrapped++
		return &flFaultFile{logFile: f, fa: fa, n: fa.wrapped}
	}}
}

// holdNextSync makes the writer's next fsync block until release is called.
func (fa *flFaults) holdNextSync() (reached <-chan struct{}, release func()) {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	gate, at := make(chan struct{}), make(chan struct{})
	fa.gate, fa.atGate = gate, at
	return at, sync.OnceFunc(func() { close(gate) })
}

func (fa *flFaults) set(f func(fa *flFaults)) {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	f(fa)
}

type flFaultFile struct {
	logFile
	fa *flFaults
	n  int
}

func (f *flFaultFile) active() bool { return f.fa.onlyFile == 0 || f.fa.onlyFile == f.n }

func (f *flFaultFile) Write(p []byte) (int, error) {
	f.fa.mu.Lock()
	var err error
	n := 0
	if f.active() {
		err, n = f.fa.writeErr, f.fa.writeN
		f.fa.writeErr = nil
	}
	f.fa.mu.Unlock()
	if err != nil {
		n = min(n, len(p))
		if n > 0 {
			if _, werr := f.logFile.Write(p[:n]); werr != nil {
				return 0, werr
			}
		}
		return n, err
	}
	return f.logFile.Write(p)
}

func (f *flFaultFile) Sync() error {
	// A fault armed while this fsync waits at the gate is for the next one.
	f.fa.mu.Lock()
	gate, at := f.fa.gate, f.fa.atGate
	f.fa.gate = nil
	var err error
	if f.active() {
		err = f.fa.syncErr
		f.fa.syncErr = nil
	}
	d := f.fa.syncDelay
	f.fa.mu.Unlock()
	if gate != nil {
		close(at)
		<-gate
	}
	if d > 0 {
		time.Sleep(d)
	}
	if err != nil {
		return err
	}
	return f.logFile.Sync()
}

func TestFileLogStateAndReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	ctx := context.Background()

	a, b, c, d, e := flG(1), flG(2), flG(3), flG(4), flG(5)
	flCommit(t, l, flDecision(a, "pg", "mysql"))
	flCommit(t, l, flDecision(b, "pg"))
	// An action before the decision: the entry is listed by its first
	// record, Pending by its decision.
	if err := l.Record(ctx, Action{GTRID: c, Op: "note", Actor: "test"}); err != nil {
		t.Fatal(err)
	}
	flCommit(t, l, flDecision(c, "mysql"))
	recA1 := Action{GTRID: a, Resource: "pg", Branch: 0, Op: "commit", Reason: "phase 2", Actor: "recovery@node-1", At: flT0.Add(time.Second)}
	recA2 := Action{GTRID: a, Resource: "mysql", Branch: 1, Op: "commit", Actor: "recovery@node-1", At: flT0.Add(2 * time.Second)}
	for _, act := range []Action{recA1, recA2} {
		if err := l.Record(ctx, act); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Abort(ctx, Action{GTRID: d, Reason: "presumed", Actor: "recovery"}); err != nil {
		t.Fatal(err)
	}
	if err := l.End(b); err != nil {
		t.Fatal(err)
	}
	if err := l.End(b); err != nil {
		t.Fatalf("second End: %v", err)
	}

	check := func(t *testing.T, l *FileLog) {
		t.Helper()
		tests := []struct {
			gt      drivers.GlobalID
			found   bool
			state   State
			actions []string // ops
		}{
			{a, true, StateCommitted, []string{"commit", "commit"}},
			{b, true, StateDone, nil},
			{c, true, StateCommitted, []string{"note"}},
			{d, true, StateAborted, []string{"abort"}},
			{e, false, StateNone, nil},
		}
		for _, tt := range tests {
			got, ok := l.Lookup(tt.gt)
			if ok != tt.found || got.State != tt.state {
				t.Errorf("Lookup(%s) = %v, %v; want %v, %v", tt.gt, got.State, ok, tt.state, tt.found)
				continue
			}
			var ops []string
			for _, act := range got.Actions {
				ops = append(ops, act.Op)
			}
			if !reflect.DeepEqual(ops, tt.actions) {
				t.Errorf("Lookup(%s).Actions ops = %q, want %q", tt.gt, ops, tt.actions)
			}
		}
		ea, _ := l.Lookup(a)
		if ea.Decision == nil || len(ea.Decision.Participants) != 2 || ea.Decision.Participants[1] != (Participant{Resource: "mysql", Branch: 1}) {
			t.Errorf("decision of a = %+v", ea.Decision)
		}
		if !ea.Decision.At.Equal(flT0) {
			t.Errorf("decision time = %v, want the clock's %v", ea.Decision.At, flT0)
		}
		if got := ea.Actions[0]; got.Reason != "phase 2" || got.Actor != "recovery@node-1" || got.Resource != "pg" || !got.At.Equal(recA1.At) {
			t.Errorf("action = %+v, want %+v", got, recA1)
		}
		var pend []string
		for _, p := range l.Pending() {
			pend = append(pend, p.GTRID.String())
		}
		if want := []string{a.String(), c.String()}; !reflect.DeepEqual(pend, want) {
			t.Errorf("Pending = %q, want %q", pend, want)
		}
		var order []string
		for _, en := range l.Entries() {
			order = append(order, en.GTRID.String())
		}
		if want := []string{a.String(), b.String(), c.String(), d.String()}; !reflect.DeepEqual(order, want) {
			t.Errorf("Entries order = %q, want %q", order, want)
		}
	}
	check(t, l)
	before := l.Entries()
	pendBefore := l.Pending()
	flClose(t, l)

	l2 := openFL(t, dir, clock, nil)
	check(t, l2)
	if after := l2.Entries(); !reflect.DeepEqual(before, after) {
		t.Errorf("Entries differ after reopen:\nbefore %+v\nafter  %+v", before, after)
	}
	if after := l2.Pending(); !reflect.DeepEqual(pendBefore, after) {
		t.Errorf("Pending differs after reopen:\nbefore %+v\nafter  %+v", pendBefore, after)
	}
	if s := l2.Stats(); s.Entries != 4 || s.Bytes <= int64(len(logMagic)) {
		t.Errorf("Stats after reopen = %+v", s)
	}
}

// The returned Entry is a copy: changing it does not change the log.
func TestFileLogLookupReturnsCopy(t *testing.T) {
	l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
	flCommit(t, l, flDecision(flG(1), "pg"))
	e, _ := l.Lookup(flG(1))
	e.Decision.Participants[0].Resource = "changed"
	p := l.Pending()
	p[0].Participants[0].Resource = "changed"
	if e2, _ := l.Lookup(flG(1)); e2.Decision.Participants[0].Resource != "pg" {
		t.Fatalf("internal state changed through a returned Entry: %+v", e2.Decision)
	}
}

func TestFileLogRecordFormat(t *testing.T) {
	dir := t.TempDir()
	l := openFL(t, dir, newFLClock(flT0), nil)
	flCommit(t, l, flDecision(flG(7), "pg"))
	flClose(t, l)
	data, err := os.ReadFile(filepath.Join(dir, "xabridge.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("XABLOG1\n")) {
		t.Fatalf("no magic header: %q", data[:8])
	}
	rec := data[8:]
	n := binary.LittleEndian.Uint32(rec)
	if int(n) != len(rec)-8 {
		t.Fatalf("length %d, want %d", n, len(rec)-8)
	}
	payload := rec[8:]
	if crc := crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)); crc != binary.LittleEndian.Uint32(rec[4:]) {
		t.Fatalf("CRC-32C mismatch")
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatalf("payload is not JSON: %v", err)
	}
	if m["k"] != "commit" || m["g"] != flG(7).String() {
		t.Fatalf("payload = %s", payload)
	}
}

func TestFileLogGroupCommit(t *testing.T) {
	const workers, perWorker = 64, 50
	for _, tc := range []struct {
		name      string
		syncDelay time.Duration // emulates a disk with this fsync latency
		assert    bool
	}{
		// Count, not time: with fsync taking 1ms, 64 busy clients must
		// share fsyncs whatever the machine.
		{"slow-disk", time.Millisecond, true},
		// The real disk under t.TempDir: numbers are logged only, since a
		// tmpfs fsync is nearly free and needs no batching.
		{"real-disk", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := &flFaults{syncDelay: tc.syncDelay}
			l := openFL(t, t.TempDir(), newFLClock(flT0), fa)
			base := l.Stats()
			var seq atomic.Uint32
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for range workers {
				wg.Go(func() {
					for range perWorker {
						if err := l.Commit(context.Background(), flDecision(flG(seq.Add(1)), "pg", "mysql")); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			s := l.Stats()
			appends, syncs, batches := s.Appends-base.Appends, s.Syncs-base.Syncs, s.Batches-base.Batches
			t.Logf("%d appends, %d syncs, %d batches (%.1f records/batch)", appends, syncs, batches, float64(appends)/float64(batches))
			if appends != workers*perWorker {
				t.Fatalf("appends = %d, want %d", appends, workers*perWorker)
			}
			if len(l.Pending()) != workers*perWorker {
				t.Fatalf("pending = %d", len(l.Pending()))
			}
			if syncs != batches {
				t.Errorf("syncs = %d, batches = %d: want one fsync per batch", syncs, batches)
			}
			if tc.assert && syncs*4 > appends {
				t.Errorf("%d fsyncs for %d records: want fewer than a quarter", syncs, appends)
			}
		})
	}
}

// The batch limit splits a large queue into several batches.
func TestFileLogMaxBatch(t *testing.T) {
	fa := &flFaults{}
	l, err := OpenFileLog(t.TempDir(), FileLogOptions{Now: newFLClock(flT0).Now, MaxBatch: 3, hooks: fa.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	reached, release := fa.holdNextSync()
	first := flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(100), "pg")) })
	<-reached
	var results []<-chan error
	for i := range 7 {
		results = append(results, flAsync(func() error { return l.Commit(context.Background(), flDecision(flG(uint32(i)), "pg")) }))
		flWaitQueued(t, l, i+1)
	}
	release()
	for _, ch := range append(results, first) {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	// 1 (the held batch) + ceil(7/3) batches.
	if s := l.Stats(); s.Batches != 4 || s.Appends != 8 {
		t.Fatalf("stats = %+v, want 4 batches for 8 records", s)
	}
}

func TestFileLogFence(t *testing.T) {
	ctx := context.Background()
	deadline := flT0.Add(time.Hour)

	t.Run("deadline", func(t *testing.T) {
		tests := []struct {
			name    string
			now     time.Time
			wantErr error
		}{
			{"before", deadline.Add(-time.Millisecond), nil},
			{"at", deadline, ErrFenced},
			{"after", deadline.Add(time.Minute), ErrFenced},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				clock := newFLClock(tt.now)
				l := openFL(t, t.TempDir(), clock, nil)
				err := l.Commit(ctx, flDecision(flGID(1, deadline), "pg"))
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
					t.Fatalf("Commit = %v, want %v", err, tt.wantErr)
				}
				_, found := l.Lookup(flGID(1, deadline))
				s := l.Stats()
				if tt.wantErr != nil && (found || s.Appends != 0 || s.Fenced != 1) {
					t.Fatalf("fenced commit left a trace: found=%v stats=%+v", found, s)
				}
			})
		}
	})

	// The fence uses the deadline as the gtrid carries it (milliseconds),
	// not a finer one the caller may hold.
	t.Run("millisecond deadline", func(t *testing.T) {
		fine := deadline.Add(999 * time.Microsecond)
		clock := newFLClock(deadline.Add(500 * time.Microsecond))
		l := openFL(t, t.TempDir(), clock, nil)
		if err := l.Commit(ctx, flDecision(flGID(1, fine), "pg")); !errors.Is(err, ErrFenced) {
			t.Fatalf("Commit = %v, want ErrFenced", err)
		}
	})

	t.Run("abort then commit", func(t *testing.T) {
		dir := t.TempDir()
		clock := newFLClock(flT0)
		l := openFL(t, dir, clock, nil)
		if err := l.Abort(ctx, Action{GTRID: flG(1), Actor: "recovery"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Commit(ctx, flDecision(flG(1), "pg")); !errors.Is(err, ErrFenced) {
			t.Fatalf("Commit after Abort = %v, want ErrFenced", err)
		}
		flClose(t, l)
		// The abort is durable: the fence holds after a restart.
		l = openFL(t, dir, clock, nil)
		if err := l.Commit(ctx, flDecision(flG(1), "pg")); !errors.Is(err, ErrFenced) {
			t.Fatalf("Commit after reopen = %v, want ErrFenced", err)
		}
		if e, _ := l.Lookup(flG(1)); e.State != StateAborted || e.Decision != nil {
			t.Fatalf("entry = %+v", e)
		}
	})

	t.Run("commit then abort", func(t *testing.T) {
		l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
		flCommit(t, l, flDecision(flG(1), "pg"))
		if err := l.Abort(ctx, Action{GTRID: flG(1)}); !errors.Is(err, ErrAlreadyCommitted) {
			t.Fatalf("Abort after Commit = %v, want ErrAlreadyCommitted", err)
		}
		if err := l.End(flG(1)); err != nil {
			t.Fatal(err)
		}
		flCommit(t, l, flDecision(flG(2), "pg")) // flushes the End
		if err := l.Abort(ctx, Action{GTRID: flG(1)}); !errors.Is(err, ErrAlreadyCommitted) {
			t.Fatalf("Abort after End = %v, want ErrAlreadyCommitted", err)
		}
		if e, _ := l.Lookup(flG(1)); e.State != StateDone || len(e.Actions) != 0 {
			t.Fatalf("entry = %+v", e)
		}
	})

	t.Run("repeated commit past deadline", func(t *testing.T) {
		clock := newFLClock(flT0)
		l := openFL(t, t.TempDir(), clock, nil)
		flCommit(t, l, flDecision(flG(1), "pg"))
		clock.Set(deadline.Add(time.Hour))
		// The decision is durable: repeating it must not answer "abort".
		if err := l.Commit(ctx, flDecision(flG(1), "pg")); err != nil {
			t.Fatalf("repeated Commit = %v, want nil", err)
		}
		if s := l.Stats(); s.Appends != 1 {
			t.Fatalf("repeated Commit wrote a record: %+v", s)
		}
	})

	// Both orders within one batch: the writer decides in queue order.
	for _, tc := range []struct {
		name                 string
		abortFirst           bool
		wantCommit, wantAbrt error
		wantState            State
	}{
		{"same batch abort first", true, ErrFenced, nil, StateAborted},
		{"same batch commit first", false, nil, ErrAlreadyCommitted, StateCommitted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := &flFaults{}
			l := openFL(t, t.TempDir(), newFLClock(flT0), fa)
			reached, release := fa.holdNextSync()
			blocker := flAsync(func() error { return l.Commit(ctx, flDecision(flG(99), "pg")) })
			<-reached
			commit := func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) }
			abort := func() error { return l.Abort(ctx, Action{GTRID: flG(1)}) }
			var commitErr, abortErr <-chan error
			if tc.abortFirst {
				abortErr = flAsync(abort)
				flWaitQueued(t, l, 1)
				commitErr = flAsync(commit)
			} else {
				commitErr = flAsync(commit)
				flWaitQueued(t, l, 1)
				abortErr = flAsync(abort)
			}
			flWaitQueued(t, l, 2)
			release()
			if err := <-blocker; err != nil {
				t.Fatal(err)
			}
			if err := <-commitErr; !errors.Is(err, tc.wantCommit) || (err == nil) != (tc.wantCommit == nil) {
				t.Errorf("Commit = %v, want %v", err, tc.wantCommit)
			}
			if err := <-abortErr; !errors.Is(err, tc.wantAbrt) || (err == nil) != (tc.wantAbrt == nil) {
				t.Errorf("Abort = %v, want %v", err, tc.wantAbrt)
			}
			if e, _ := l.Lookup(flG(1)); e.State != tc.wantState {
				t.Errorf("state = %v, want %v", e.State, tc.wantState)
			}
			if s := l.Stats(); s.Batches != 2 || s.Appends != 2 {
				t.Errorf("stats = %+v, want the pair decided in one batch of one record", s)
			}
		})
	}

	t.Run("racing goroutines", func(t *testing.T) {
		const n = 300
		dir := t.TempDir()
		clock := newFLClock(flT0)
		l := openFL(t, dir, clock, nil)
		type result struct{ commit, abort error }
		results := make([]result, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				results[i].commit = l.Commit(ctx, flDecision(flG(uint32(i)), "pg"))
			})
			wg.Go(func() {
				<-start
				results[i].abort = l.Abort(ctx, Action{GTRID: flG(uint32(i)), Actor: "recovery"})
			})
		}
		close(start)
		wg.Wait()
		states := make(map[string]State)
		commits := 0
		for i, r := range results {
			var want State
			switch {
			case r.commit == nil && errors.Is(r.abort, ErrAlreadyCommitted):
				want = StateCommitted
				commits++
			case r.abort == nil && errors.Is(r.commit, ErrFenced):
				want = StateAborted
			default:
				t.Fatalf("gtrid %d: commit=%v abort=%v: want exactly one to win", i, r.commit, r.abort)
			}
			e, _ := l.Lookup(flG(uint32(i)))
			if e.State != want {
				t.Fatalf("gtrid %d: state %v, want %v", i, e.State, want)
			}
			states[flG(uint32(i)).String()] = want
		}
		t.Logf("%d commits won, %d aborts won", commits, n-commits)
		flClose(t, l)
		l = openFL(t, dir, clock, nil)
		for _, e := range l.Entries() {
			if states[e.GTRID.String()] != e.State {
				t.Fatalf("after reopen %s is %v, want %v", e.GTRID, e.State, states[e.GTRID.String()])
			}
		}
	})
}

func TestFileLogFailStop(t *testing.T) {
	ctx := context.Background()
	errIO := errors.New("injected EIO")
	tests := []struct {
		name string
		arm  func(fa *flFaults)
	}{
		{"write error", func(fa *flFaults) { fa.writeErr = errIO }},
		{"short write", func(fa *flFaults) { fa.writeErr, fa.writeN = errIO, 100 }},
		{"fsync error", func(fa *flFaults) { fa.syncErr = errIO }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			clock := newFLClock(flT0)
			fa := &flFaults{}
			l := openFL(t, dir, clock, fa)
			flCommit(t, l, flDecision(flG(1), "pg"))

			// Hold the writer so that several records form the batch
			// that will fail.
			reached, release := fa.holdNextSync()
			blocker := flAsync(func() error { return l.Commit(ctx, flDecision(flG(2), "pg")) })
			<-reached
			const n = 5
			var waiters []<-chan error
			for i := range n {
				waiters = append(waiters, flAsync(func() error { return l.Commit(ctx, flDecision(flG(uint32(10+i)), "pg")) }))
			}
			waiters = append(waiters, flAsync(func() error { return l.Abort(ctx, Action{GTRID: flG(1)}) }))
			flWaitQueued(t, l, n+1)
			fa.set(tt.arm)
			release()
			if err := <-blocker; err != nil {
				t.Fatal(err)
			}
			for i, ch := range waiters {
				// Even the abort that would have been refused: its
				// answer depends on nothing in this batch, so it is
				// refused normally. Every commit waiter sees the failure.
				err := <-ch
				if i == n {
					if !errors.Is(err, ErrAlreadyCommitted) {
						t.Errorf("abort of a durable commit = %v", err)
					}
					continue
				}
				if !errors.Is(err, ErrLogFailed) || !errors.Is(err, errIO) {
					t.Errorf("waiter %d: %v, want ErrLogFailed wrapping the cause", i, err)
				}
			}
			for i := range n {
				if _, ok := l.Lookup(flG(uint32(10 + i))); ok {
					t.Errorf("failed record %d shows in memory", i)
				}
			}
			if p := l.Pending(); len(p) != 2 {
				t.Errorf("Pending = %d decisions, want the 2 durable ones", len(p))
			}
			// Fail-stop: every later write is refused.
			later := map[string]error{
				"commit":  l.Commit(ctx, flDecision(flG(50), "pg")),
				"abort":   l.Abort(ctx, Action{GTRID: flG(51)}),
				"record":  l.Record(ctx, Action{GTRID: flG(1), Op: "x"}),
				"end":     l.End(flG(1)),
				"compact": l.Compact(ctx),
			}
			for op, err := range later {
				if !errors.Is(err, ErrLogFailed) {
					t.Errorf("%s after failure = %v, want ErrLogFailed", op, err)
				}
			}
			if err := l.Close(); !errors.Is(err, ErrLogFailed) {
				t.Errorf("Close = %v, want the failure", err)
			}

			// Reopening is the way out. Records of the failed batch may or
			// may not be there (that is what "unknown" means), but
			// nothing else changed and the log works again.
			l2 := openFL(t, dir, clock, nil)
			for _, gt := range []drivers.GlobalID{flG(1), flG(2)} {
				if e, _ := l2.Lookup(gt); e.State != StateCommitted {
					t.Errorf("%s after reopen: %v", gt, e.State)
				}
			}
			for i := range n {
				if e, ok := l2.Lookup(flG(uint32(10 + i))); ok && e.State != StateCommitted {
					t.Errorf("failed record %d reappeared as %v", i, e.State)
				}
			}
			t.Logf("after reopen: %d entries, %d torn bytes cut", len(l2.Entries()), l2.Stats().TruncatedBytes)
			flCommit(t, l2, flDecision(flG(60), "pg"))
		})
	}

	// A refusal that depends on a record of the failing batch must not be
	// reported as a fact.
	t.Run("dependent answer", func(t *testing.T) {
		fa := &flFaults{}
		l := openFL(t, t.TempDir(), newFLClock(flT0), fa)
		reached, release := fa.holdNextSync()
		blocker := flAsync(func() error { return l.Commit(ctx, flDecision(flG(99), "pg")) })
		<-reached
		commit := flAsync(func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) })
		flWaitQueued(t, l, 1)
		abort := flAsync(func() error { return l.Abort(ctx, Action{GTRID: flG(1)}) })
		again := flAsync(func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) })
		flWaitQueued(t, l, 3)
		fa.set(func(fa *flFaults) { fa.syncErr = errIO })
		release()
		<-blocker
		for name, ch := range map[string]<-chan error{"commit": commit, "abort": abort, "repeated commit": again} {
			if err := <-ch; !errors.Is(err, ErrLogFailed) {
				t.Errorf("%s = %v, want ErrLogFailed", name, err)
			}
		}
	})
}

// flFrameOffsets returns the offset of every frame of a well-formed log.
func flFrameOffsets(t *testing.T, data []byte) []int {
	t.Helper()
	var offs []int
	for off := len(logMagic); off < len(data); off += frameHeaderLen + int(binary.LittleEndian.Uint32(data[off:])) {
		offs = append(offs, off)
	}
	return offs
}

func flWriteLogFile(t *testing.T, data []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, logFileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func flReadLogFile(t *testing.T, dir string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, logFileName))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestFileLogRecovery(t *testing.T) {
	clock := newFLClock(flT0)
	// A base log of three commit decisions.
	baseDir := t.TempDir()
	l := openFL(t, baseDir, clock, nil)
	for i := range 3 {
		flCommit(t, l, flDecision(flG(uint32(i+1)), "pg", "mysql"))
	}
	flClose(t, l)
	base := flReadLogFile(t, baseDir)
	offs := flFrameOffsets(t, base)
	if len(offs) != 3 {
		t.Fatalf("base log has %d frames", len(offs))
	}
	last := offs[2]

	flip := func(data []byte, at int) []byte {
		d := bytes.Clone(data)
		d[at] ^= 0x40
		return d
	}
	// A frame whose checksum is right but whose payload is not a record.
	badPayload := []byte(`{"k":"bogus","g":"x"}` + "\n")
	badFrame := binary.LittleEndian.AppendUint32(nil, uint32(len(badPayload)))
	badFrame = binary.LittleEndian.AppendUint32(badFrame, crc32.Checksum(badPayload, castagnoli))
	badFrame = append(badFrame, badPayload...)
	hugeLen := bytes.Clone(base)
	binary.LittleEndian.PutUint32(hugeLen[offs[1]:], 1<<30)
	longLen := bytes.Clone(base)
	binary.LittleEndian.PutUint32(longLen[offs[1]:], uint32(len(base)))

	tests := []struct {
		name      string
		data      []byte
		wantN     int    // records kept (when the open succeeds)
		wantCut   int    // file length after a writable open; 0: unchanged
		wantErr   string // substring of the open error; "" for success
		corrupted bool   // the error wraps errCorruptLog
	}{
		{"intact", base, 3, 0, "", false},
		{"torn frame header", base[:last+5], 2, last, "", false},
		{"torn payload", base[:len(base)-3], 2, last, "", false},
		{"bad crc at tail", flip(base, len(base)-4), 2, last, "", false},
		{"bad length at tail", flip(base, last+1), 2, last, "", false},
		{"garbage after last record", append(bytes.Clone(base), "some garbage that is not a frame"...), 3, len(base), "", false},
		{"zeros after last record", append(bytes.Clone(base), make([]byte, 4096)...), 3, len(base), "", false},
		{"flipped byte mid-file", flip(base, offs[1]+20), 0, 0, fmt.Sprintf("checksum mismatch at offset %d", offs[1]), true},
		{"flipped byte in first record", flip(base, offs[0]+9), 0, 0, fmt.Sprintf("at offset %d", offs[0]), true},
		{"invalid length mid-file", hugeLen, 0, 0, fmt.Sprintf("invalid record length %d at offset %d", 1<<30, offs[1]), true},
		{"length past EOF mid-file", longLen, 0, 0, fmt.Sprintf("runs past the end of the file at offset %d", offs[1]), true},
		{"valid frame, bad payload", append(bytes.Clone(base), badFrame...), 0, 0, fmt.Sprintf("offset %d: unknown record kind", len(base)), true},
		{"header mismatch", append([]byte("NOTALOG\n"), base[8:]...), 0, 0, "not a xabridge decision log", false},
		{"other file", []byte("hello world, this is a text file\n"), 0, 0, "not a xabridge decision log", false},
		{"empty file", nil, 0, len(logMagic), "", false},
		{"partial header", []byte("XABL"), 0, len(logMagic), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Read-only first: it must not change the file, and it sees
			// the same records (a torn tail is ignored).
			dir := flWriteLogFile(t, tt.data)
			ro, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true, Now: clock.Now})
			if tt.wantErr == "" && err != nil {
				t.Fatalf("read-only open: %v", err)
			}
			if tt.wantErr != "" && err == nil {
				t.Fatalf("read-only open succeeded, want error %q", tt.wantErr)
			}
			if err == nil {
				if n := len(ro.Entries()); n != tt.wantN {
					t.Errorf("read-only: %d entries, want %d", n, tt.wantN)
				}
				ro.Close()
			}
			if got := flReadLogFile(t, dir); !bytes.Equal(got, tt.data) {
				t.Fatalf("read-only open changed the file")
			}

			l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
			if tt.wantErr != "" {
				if err == nil {
					l.Close()
					t.Fatalf("open succeeded, want error %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("open error = %q, want it to contain %q", err, tt.wantErr)
				}
				if errors.Is(err, errCorruptLog) != tt.corrupted {
					t.Fatalf("errors.Is(%v, errCorruptLog) = %v", err, !tt.corrupted)
				}
				if got := flReadLogFile(t, dir); !bytes.Equal(got, tt.data) {
					t.Fatalf("a refused open changed the file")
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer l.Close()
			if n := len(l.Entries()); n != tt.wantN {
				t.Errorf("%d entries, want %d", n, tt.wantN)
			}
			want := len(tt.data)
			if tt.wantCut != 0 {
				want = tt.wantCut
			}
			if got := len(flReadLogFile(t, dir)); got != want {
				t.Errorf("file is %d bytes after open, want %d", got, want)
			}
			// Appending after the cut yields a clean log.
			flCommit(t, l, flDecision(flG(42), "pg"))
			flClose(t, l)
			l2 := openFL(t, dir, clock, nil)
			if n := len(l2.Entries()); n != tt.wantN+1 {
				t.Errorf("after append and reopen: %d entries, want %d", n, tt.wantN+1)
			}
			if s := l2.Stats(); s.TruncatedBytes != 0 {
				t.Errorf("second open cut %d more bytes", s.TruncatedBytes)
			}
		})
	}

	// A crash can cut the last record at any byte.
	t.Run("torn at every offset", func(t *testing.T) {
		for cut := last + 1; cut < len(base); cut++ {
			dir := flWriteLogFile(t, base[:cut])
			l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
			if err != nil {
				t.Fatalf("cut at %d: %v", cut, err)
			}
			n, s := len(l.Entries()), l.Stats()
			l.Close()
			if n != 2 || s.Bytes != int64(last) || s.TruncatedBytes != int64(cut-last) {
				t.Fatalf("cut at %d: %d entries, stats %+v", cut, n, s)
			}
		}
	})

	t.Run("missing dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "b")
		if _, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true}); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("read-only open of a missing dir = %v, want ErrNotExist", err)
		}
		l := openFL(t, dir, clock, nil)
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("created dir mode %o, want 700", perm)
		}
		if got := flReadLogFile(t, dir); string(got) != logMagic {
			t.Errorf("new log = %q", got)
		}
		flCommit(t, l, flDecision(flG(1), "pg"))
	})

	t.Run("stale compaction file", func(t *testing.T) {
		dir := flWriteLogFile(t, base)
		stale := filepath.Join(dir, compactFileName)
		if err := os.WriteFile(stale, []byte("half a compaction"), 0o600); err != nil {
			t.Fatal(err)
		}
		l := openFL(t, dir, clock, nil)
		if n := len(l.Entries()); n != 3 {
			t.Errorf("%d entries", n)
		}
		if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale compaction file still there: %v", err)
		}
	})
}

// A crash leaves whatever was written; reopening a copy of the file taken
// while the log is open (never closed) must find every acknowledged record.
func TestFileLogCrashImage(t *testing.T) {
	ctx := context.Background()
	clock := newFLClock(flT0)
	dir := t.TempDir()
	l := openFL(t, dir, clock, nil)
	for i := range 20 {
		flCommit(t, l, flDecision(flG(uint32(i)), "pg", "mysql"))
	}
	if err := l.End(flG(3)); err != nil {
		t.Fatal(err)
	}
	if err := l.Abort(ctx, Action{GTRID: flG(100), Actor: "recovery"}); err != nil { // flushes the End
		t.Fatal(err)
	}
	// The last record starts an entry of its own, so a torn tail drops
	// exactly the last entry.
	if err := l.Record(ctx, Action{GTRID: flG(200), Op: "commit", Resource: "pg", Heuristic: true}); err != nil {
		t.Fatal(err)
	}
	want := l.Entries()
	image := flReadLogFile(t, dir) // the log is still open: a crash image

	t.Run("whole image", func(t *testing.T) {
		crashDir := flWriteLogFile(t, image)
		l2 := openFL(t, crashDir, clock, nil)
		if got := l2.Entries(); !reflect.DeepEqual(got, want) {
			t.Fatalf("entries after crash differ:\n got %+v\nwant %+v", got, want)
		}
		if e, _ := l2.Lookup(flG(3)); e.State != StateDone {
			t.Errorf("ended entry is %v", e.State)
		}
		if e, _ := l2.Lookup(flG(200)); !e.Heuristic() {
			t.Errorf("heuristic action lost")
		}
	})
	t.Run("crash mid-write", func(t *testing.T) {
		offs := flFrameOffsets(t, image)
		crashDir := flWriteLogFile(t, image[:len(image)-7])
		l2 := openFL(t, crashDir, clock, nil)
		if got := l2.Entries(); !reflect.DeepEqual(got, want[:len(want)-1]) {
			t.Fatalf("entries after torn crash differ")
		}
		if _, ok := l2.Lookup(flG(200)); ok {
			t.Errorf("torn heuristic record survived")
		}
		if s := l2.Stats(); s.Bytes != int64(offs[len(offs)-1]) {
			t.Errorf("size after cut = %d, want %d", s.Bytes, offs[len(offs)-1])
		}
	})
	flClose(t, l)
}

func TestFileLogLock(t *testing.T) {
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	flCommit(t, l, flDecision(flG(1), "pg"))

	_, err := OpenFileLog(dir, FileLogOptions{})
	if !errors.Is(err, ErrLogLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second writable open = %v, want ErrLogLocked naming %s", err, dir)
	}
	if !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("lock error does not name the holder: %v", err)
	}

	// Another process is refused too.
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileLogLockHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "XABRIDGE_FILELOG_LOCK_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "LOCKED") {
		t.Fatalf("other process: %v\n%s", err, out)
	}

	// Read-only opens take no lock.
	ro, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open while locked: %v", err)
	}
	if _, ok := ro.Lookup(flG(1)); !ok {
		t.Errorf("read-only log does not see the decision")
	}
	flClose(t, l)
	// Closing releases the lock, even while a reader is open.
	l2 := openFL(t, dir, clock, nil)
	if _, ok := l2.Lookup(flG(1)); !ok {
		t.Errorf("decision lost")
	}
	flClose(t, ro)
}

// TestFileLogLockHelperProcess is run by TestFileLogLock as a second process.
func TestFileLogLockHelperProcess(t *testing.T) {
	dir := os.Getenv("XABRIDGE_FILELOG_LOCK_DIR")
	if dir == "" {
		t.Skip("helper process for TestFileLogLock")
	}
	l, err := OpenFileLog(dir, FileLogOptions{})
	switch {
	case errors.Is(err, ErrLogLocked):
		fmt.Println("LOCKED:", err)
	case err != nil:
		t.Fatalf("open: %v", err)
	default:
		l.Close()
		t.Fatalf("second process opened a locked log")
	}
}

func TestFileLogCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)

	bulky := strings.Repeat("resource-with-a-long-name-", 8)
	// Dead after End: most of the file.
	for i := range 200 {
		gt := flG(uint32(1000 + i))
		flCommit(t, l, flDecision(gt, bulky+"pg", bulky+"mysql"))
		if err := l.Record(ctx, Action{GTRID: gt, Op: "commit", Resource: bulky + "pg"}); err != nil {
			t.Fatal(err)
		}
		if err := l.End(gt); err != nil {
			t.Fatal(err)
		}
	}
	// Live: pending decisions (one with an action), an abort still needed by
	// the fence, and a heuristic outcome (kept even though it ended).
	pending1, pending2 := flG(1), flG(2)
	flCommit(t, l, flDecision(pending1, "pg", "mysql"))
	if err := l.Record(ctx, Action{GTRID: pending1, Resource: "pg", Op: "commit", Actor: "recovery"}); err != nil {
		t.Fatal(err)
	}
	abortLive := flG(3)
	if err := l.Abort(ctx, Action{GTRID: abortLive, Actor: "recovery"}); err != nil {
		t.Fatal(err)
	}
	heur := flG(4)
	flCommit(t, l, flDecision(heur, "pg", "mysql"))
	if err := l.Record(ctx, Action{GTRID: heur, Resource: "mysql", Op: "rollback", Actor: "operator", Heuristic: true}); err != nil {
		t.Fatal(err)
	}
	if err := l.End(heur); err != nil {
		t.Fatal(err)
	}
	// Dead: an abort long past its deadline, and a plain action with no
	// decision.
	abortOld := flGID(5, flT0.Add(-24*time.Hour))
	if err := l.Abort(ctx, Action{GTRID: abortOld}); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx, Action{GTRID: flG(6), Op: "rollback", Actor: "recovery"}); err != nil {
		t.Fatal(err)
	}
	flCommit(t, l, flDecision(pending2, "mysql")) // also flushes the Ends

	liveKeys := []string{pending1.String(), abortLive.String(), heur.String(), pending2.String()}
	var want []Entry
	for _, e := range l.Entries() {
		if slices.Contains(liveKeys, e.GTRID.String()) {
			want = append(want, e)
		}
	}
	wantPending := l.Pending()[:0:0]
	for _, d := range l.Pending() {
		if d.GTRID.String() != heur.String() {
			wantPending = append(wantPending, d)
		}
	}
	before := l.Stats()
	if before.Live != 4 || before.Entries != 206 {
		t.Fatalf("before compaction: %+v", before)
	}

	if err := l.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	after := l.Stats()
	t.Logf("compaction: %d -> %d bytes", before.Bytes, after.Bytes)
	if after.Bytes*10 > before.Bytes || after.Compactions != 1 || after.Entries != 4 {
		t.Fatalf("after compaction: %+v (before %+v)", after, before)
	}
	if fi, err := os.Stat(filepath.Join(dir, logFileName)); err != nil || fi.Size() != after.Bytes {
		t.Fatalf("file size %v, %v; stats say %d", fi.Size(), err, after.Bytes)
	}
	if _, err := os.Stat(filepath.Join(dir, compactFileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("compaction file left behind: %v", err)
	}
	if got := l.Entries(); !reflect.DeepEqual(got, want) {
		t.Fatalf("entries after compaction:\n got %+v\nwant %+v", got, want)
	}
	if got := l.Pending(); !reflect.DeepEqual(got, wantPending) {
		t.Fatalf("pending after compaction:\n got %+v\nwant %+v", got, wantPending)
	}
	if _, ok := l.Lookup(flG(1000)); ok {
		t.Errorf("ended entry still in memory")
	}
	if err := l.Commit(ctx, flDecision(abortLive, "pg")); !errors.Is(err, ErrFenced) {
		t.Errorf("fence lost in compaction: %v", err)
	}

	// The log keeps working on the new file.
	flCommit(t, l, flDecision(flG(7), "pg"))
	if err := l.End(pending2); err != nil {
		t.Fatal(err)
	}
	final := l.Entries()
	flClose(t, l)
	l2 := openFL(t, dir, clock, nil)
	if got := l2.Entries(); !reflect.DeepEqual(got, final) {
		t.Fatalf("entries after compaction and reopen:\n got %+v\nwant %+v", got, final)
	}
	if err := l2.Commit(ctx, flDecision(abortLive, "pg")); !errors.Is(err, ErrFenced) {
		t.Errorf("fence lost after reopen: %v", err)
	}
	if e, _ := l2.Lookup(heur); !e.Heuristic() || e.State != StateDone {
		t.Errorf("heuristic entry = %+v", e)
	}

	// Once its deadline has passed (plus the retention margin), the abort
	// goes too; the deadline alone fences the commit from then on.
	clock.Set(abortLive.Deadline.Add(abortRetention))
	if err := l2.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := l2.Lookup(abortLive); ok {
		t.Errorf("expired abort kept")
	}
	if err := l2.Commit(ctx, flDecision(abortLive, "pg")); !errors.Is(err, ErrFenced) {
		t.Errorf("commit after the abort expired = %v, want ErrFenced", err)
	}
}

func TestFileLogAutoCompaction(t *testing.T) {
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, CompactBytes: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	flCommit(t, l, flDecision(flG(1), "pg", "mysql")) // stays pending
	for i := range 500 {
		gt := flG(uint32(100 + i))
		flCommit(t, l, flDecision(gt, "pg", "mysql"))
		if err := l.End(gt); err != nil {
			t.Fatal(err)
		}
	}
	flCommit(t, l, flDecision(flG(2), "pg"))
	s := l.Stats()
	t.Logf("stats: %+v", s)
	if s.Compactions == 0 || s.Bytes > 16<<10 || s.Entries > 200 {
		t.Fatalf("no effective auto-compaction: %+v", s)
	}
	flClose(t, l)
	l2 := openFL(t, dir, clock, nil)
	var pend []string
	for _, d := range l2.Pending() {
		pend = append(pend, d.GTRID.String())
	}
	if want := []string{flG(1).String(), flG(2).String()}; !reflect.DeepEqual(pend, want) {
		t.Fatalf("pending after auto-compaction and reopen = %q, want %q", pend, want)
	}
}

// A mostly-live log is not compacted automatically, however large.
func TestFileLogAutoCompactionSkipsLiveLog(t *testing.T) {
	l, err := OpenFileLog(t.TempDir(), FileLogOptions{Now: newFLClock(flT0).Now, CompactBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 300 {
		flCommit(t, l, flDecision(flG(uint32(i)), "pg", "mysql"))
	}
	if s := l.Stats(); s.Compactions != 0 {
		t.Fatalf("compacted a live log: %+v", s)
	}
}

func TestFileLogCompactionFaults(t *testing.T) {
	ctx := context.Background()
	errIO := errors.New("injected EIO")
	setup := func(t *testing.T, fa *flFaults, syncDirErr error) (string, *FileLog) {
		dir := t.TempDir()
		h := fa.hooks()
		h.syncDir = func(string) error { return syncDirErr }
		l, err := OpenFileLog(dir, FileLogOptions{Now: newFLClock(flT0).Now, hooks: h})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		for i := range 10 {
			flCommit(t, l, flDecision(flG(uint32(i)), "pg"))
			if i%2 == 0 {
				if err := l.End(flG(uint32(i))); err != nil {
					t.Fatal(err)
				}
			}
		}
		flCommit(t, l, flDecision(flG(99), "pg"))
		return dir, l
	}

	// Failing before the rename leaves the old file in place: an error,
	// but not fail-stop.
	for _, tc := range []struct {
		name string
		arm  func(fa *flFaults)
	}{
		{"write", func(fa *flFaults) { fa.writeErr = errIO }},
		{"fsync", func(fa *flFaults) { fa.syncErr = errIO }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := &flFaults{onlyFile: 2} // the 2nd file wrapped is the compaction's
			dir, l := setup(t, fa, nil)
			fa.set(tc.arm)
			before := l.Entries()
			if err := l.Compact(ctx); !errors.Is(err, errIO) || errors.Is(err, ErrLogFailed) {
				t.Fatalf("Compact = %v, want the injected error, not fail-stop", err)
			}
			if _, err := os.Stat(filepath.Join(dir, compactFileName)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("compaction file left behind: %v", err)
			}
			flCommit(t, l, flDecision(flG(200), "pg"))
			if got := l.Entries(); !reflect.DeepEqual(got[:len(got)-1], before) {
				t.Errorf("entries changed by a failed compaction")
			}
			want := l.Entries()
			flClose(t, l)
			l2 := openFL(t, dir, newFLClock(flT0), nil)
			if got := l2.Entries(); !reflect.DeepEqual(got, want) {
				t.Errorf("entries after reopen differ")
			}
		})
	}

	t.Run("directory fsync", func(t *testing.T) {
		fa := &flFaults{}
		dir, l := setup(t, fa, nil)
		failing := errors.New("dir fsync EIO")
		// Swap in a failing directory fsync now that the log is open.
		l.syncDirFn = func(string) error { return failing }
		if err := l.Compact(ctx); !errors.Is(err, ErrLogFailed) || !errors.Is(err, failing) {
			t.Fatalf("Compact = %v, want ErrLogFailed", err)
		}
		if err := l.Commit(ctx, flDecision(flG(300), "pg")); !errors.Is(err, ErrLogFailed) {
			t.Fatalf("Commit after failed compaction = %v, want ErrLogFailed", err)
		}
		want := l.Entries()
		l.Close()
		l2 := openFL(t, dir, newFLClock(flT0), nil)
		if got := l2.Entries(); !reflect.DeepEqual(got, want) {
			t.Errorf("entries after reopen differ")
		}
	})
}

func TestFileLogContext(t *testing.T) {
	l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ops := map[string]func() error{
		"commit":  func() error { return l.Commit(ctx, flDecision(flG(1), "pg")) },
		"abort":   func() error { return l.Abort(ctx, Action{GTRID: flG(2)}) },
		"record":  func() error { return l.Record(ctx, Action{GTRID: flG(3)}) },
		"compact": func() error { return l.Compact(ctx) },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v", name, err)
		}
	}
	if s := l.Stats(); s.Appends != 0 || s.Entries != 0 {
		t.Fatalf("cancelled calls wrote: %+v", s)
	}
}

// flWriterGoroutines counts FileLog writer goroutines in the process (one not
// yet started shows only its go-statement wrapper).
func flWriterGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			var count int
			for _, g := range strings.Split(string(buf[:n]), "\n\n") {
				if strings.Contains(g, "decisionlog.(*FileLog).run(") || strings.Contains(g, "decisionlog.OpenFileLog.gowrap") {
					count++
				}
			}
			return count
		}
		buf = make([]byte, 2*len(buf))
	}
}

// flWaitWriters waits until there are want writer goroutines: one that was
// just stopped may still be unwinding when Close returns.
func flWaitWriters(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := flWriterGoroutines()
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writer goroutines, want %d", n, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFileLogClose(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	flWaitWriters(t, 0) // earlier tests closed theirs
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	flWaitWriters(t, 1)
	flCommit(t, l, flDecision(flG(1), "pg"))
	if err := l.End(flG(1)); err != nil { // queued only; Close must flush it
		t.Fatal(err)
	}
	flClose(t, l)
	flClose(t, l) // idempotent
	flWaitWriters(t, 0)
	for name, err := range map[string]error{
		"commit":  l.Commit(ctx, flDecision(flG(2), "pg")),
		"abort":   l.Abort(ctx, Action{GTRID: flG(3)}),
		"record":  l.Record(ctx, Action{GTRID: flG(1)}),
		"end":     l.End(flG(1)),
		"compact": l.Compact(ctx),
	} {
		if !errors.Is(err, ErrLogClosed) && !(name == "end" && err == nil) {
			t.Errorf("%s after Close = %v, want ErrLogClosed", name, err)
		}
	}
	if e, _ := l.Lookup(flG(1)); e.State != StateDone {
		t.Errorf("state after Close = %v", e.State)
	}
	l2 := openFL(t, dir, clock, nil)
	if e, _ := l2.Lookup(flG(1)); e.State != StateDone {
		t.Errorf("End queued before Close was lost: %v", e.State)
	}
}

// Concurrent use of everything at once, for the race detector.
func TestFileLogConcurrentMixed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, CompactBytes: 16 << 10, MaxBatch: 16})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var seq atomic.Uint32
	for range 8 {
		wg.Go(func() {
			for range 100 {
				gt := flG(seq.Add(1))
				if err := l.Commit(ctx, flDecision(gt, "pg", "mysql")); err != nil {
					t.Error(err)
					return
				}
				if err := l.Record(ctx, Action{GTRID: gt, Op: "commit", Resource: "pg"}); err != nil {
					t.Error(err)
					return
				}
				if gt.Seq%3 != 0 {
					if err := l.End(gt); err != nil {
						t.Error(err)
						return
					}
				}
				if err := l.Abort(ctx, Action{GTRID: flG(100000 + gt.Seq)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			l.Lookup(flG(5))
			l.Pending()
			l.Entries()
			l.Stats()
		}
	})
	wg.Go(func() {
		for range 5 {
			if err := l.Compact(ctx); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	want := l.Entries()
	flClose(t, l)
	l2 := openFL(t, dir, clock, nil)
	if got := l2.Entries(); !reflect.DeepEqual(got, want) {
		t.Fatalf("entries differ after reopen (%d vs %d)", len(got), len(want))
	}
	if got := len(l2.Pending()); got != 800/3 {
		t.Fatalf("%d pending, want %d", got, 800/3)
	}
}

func TestFileLogReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	flCommit(t, l, flDecision(flG(1), "pg"))

	ro, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	flCommit(t, l, flDecision(flG(2), "pg"))
	if _, ok := ro.Lookup(flG(1)); !ok {
		t.Errorf("read-only log misses a decision")
	}
	if _, ok := ro.Lookup(flG(2)); ok {
		t.Errorf("read-only log is a snapshot, yet sees a later decision")
	}
	for name, err := range map[string]error{
		"commit":  ro.Commit(ctx, flDecision(flG(3), "pg")),
		"abort":   ro.Abort(ctx, Action{GTRID: flG(3)}),
		"record":  ro.Record(ctx, Action{GTRID: flG(1)}),
		"end":     ro.End(flG(1)),
		"compact": ro.Compact(ctx),
	} {
		if !errors.Is(err, ErrLogReadOnly) {
			t.Errorf("read-only %s = %v, want ErrLogReadOnly", name, err)
		}
	}
	if ro.Dir() != dir {
		t.Errorf("Dir = %q", ro.Dir())
	}
	flClose(t, ro)
	flClose(t, ro)
}

func TestFileLogValidation(t *testing.T) {
	ctx := context.Background()
	l := openFL(t, t.TempDir(), newFLClock(flT0), nil)
	bad := drivers.GlobalID{Node: "Bad Node!", Begin: flT0, Deadline: flT0.Add(time.Hour)}
	tests := []struct {
		name string
		op   func() error
	}{
		{"zero gtrid", func() error { return l.Commit(ctx, Decision{}) }},
		{"bad node", func() error { return l.Commit(ctx, flDecision(bad, "pg")) }},
		{"abort bad gtrid", func() error { return l.Abort(ctx, Action{GTRID: bad}) }},
		{"too many participants", func() error {
			d := Decision{GTRID: flG(1), Participants: make([]Participant, drivers.MaxBranches+1)}
			return l.Commit(ctx, d)
		}},
		{"record too large", func() error {
			return l.Record(ctx, Action{GTRID: flG(1), Reason: strings.Repeat("x", maxRecordLen)})
		}},
		{"end without decision", func() error { return l.End(flG(2)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if err == nil || errors.Is(err, ErrLogFailed) {
				t.Fatalf("err = %v, want a validation error", err)
			}
		})
	}
	// None of that stopped the log.
	flCommit(t, l, flDecision(flG(1), "pg"))
}

// Strings that are not valid UTF-8 come back from a reopen exactly as the
// running log reported them.
func TestFileLogInvalidUTF8(t *testing.T) {
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l := openFL(t, dir, clock, nil)
	if err := l.Record(context.Background(), Action{GTRID: flG(1), Reason: "bad \xff\xfe bytes", Op: "op\x00"}); err != nil {
		t.Fatal(err)
	}
	want := l.Entries()
	flClose(t, l)
	l2 := openFL(t, dir, clock, nil)
	if got := l2.Entries(); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
