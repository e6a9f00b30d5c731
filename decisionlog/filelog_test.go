package decisionlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
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
	return drivers.MustGlobalID("node-1", deadline.Add(-2*time.Hour), seq, deadline)
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
	if !bytes.HasPrefix(data, []byte("XABLOG2\n")) {
		t.Fatalf("no magic header: %q", data[:8])
	}
	// The header, then one batch: the commit record and its seal.
	rest := data[8:]
	var frames []map[string]any
	var offs []int
	for len(rest) > 0 {
		offs = append(offs, len(data)-len(rest))
		n := binary.LittleEndian.Uint32(rest)
		if int(n) > len(rest)-8 {
			t.Fatalf("length %d, only %d bytes left", n, len(rest)-8)
		}
		payload := rest[8 : 8+n]
		if crc := crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)); crc != binary.LittleEndian.Uint32(rest[4:]) {
			t.Fatalf("CRC-32C mismatch")
		}
		var m map[string]any
		if err := json.Unmarshal(payload, &m); err != nil {
			t.Fatalf("payload is not JSON: %v", err)
		}
		frames = append(frames, m)
		rest = rest[8+n:]
	}
	if len(frames) != 3 {
		t.Fatalf("%d frames, want header, commit, seal: %v", len(frames), frames)
	}
	if frames[0]["k"] != "hdr" || frames[0]["v"] != float64(2) {
		t.Fatalf("header = %v", frames[0])
	}
	if m := frames[1]; m["k"] != "commit" || m["g"] != flG(7).String() {
		t.Fatalf("payload = %v", m)
	}
	if m := frames[2]; m["k"] != "seal" || m["n"] != float64(1) || m["d"] != float64(offs[1]) {
		t.Fatalf("seal = %v, want batch 1, durable up to the header's end %d", m, offs[1])
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
