package decisionlog

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

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
	clock.Set(abortLive.Deadline().Add(abortRetention))
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

// Compaction writes its file beside the writer: commits, ends and aborts
// go on (and are durable) while it runs, and the swap carries them over.
func TestFileLogCompactionInBackground(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	fa := &flFaults{}
	l := openFL(t, dir, clock, fa)
	for i := range 50 {
		flCommit(t, l, flDecision(flG(uint32(100+i)), "pg", "mysql"))
		if err := l.End(flG(uint32(100 + i))); err != nil {
			t.Fatal(err)
		}
	}
	pendingBefore := flG(1)
	flCommit(t, l, flDecision(pendingBefore, "pg"))
	endsDuring := flG(2)
	flCommit(t, l, flDecision(endsDuring, "pg"))

	reached, release := fa.holdNextSync() // the compaction file's fsync
	defer release()
	compacted := flAsync(func() error { return l.Compact(ctx) })
	<-reached
	// The compaction is stuck in its fsync; the log is not.
	during := flG(3)
	flCommit(t, l, flDecision(during, "pg", "mysql"))
	if err := l.End(endsDuring); err != nil {
		t.Fatal(err)
	}
	if err := l.Abort(ctx, Action{GTRID: flG(4), Actor: "recovery"}); err != nil {
		t.Fatal(err)
	}
	if e, ok := l.Lookup(flG(120)); !ok || e.State != StateDone {
		t.Errorf("an ended transaction is unknown while compacting: %+v, %v", e, ok)
	}
	if err := l.Record(ctx, Action{GTRID: flG(121), Op: "rollback", Resource: "pg", Heuristic: true}); err != nil {
		t.Fatal(err) // revives a done transaction during the compaction
	}
	release()
	if err := <-compacted; err != nil {
		t.Fatal(err)
	}
	check := func(l *FileLog) {
		t.Helper()
		want := map[uint32]State{1: StateCommitted, 2: StateDone, 3: StateCommitted, 4: StateAborted, 121: StateDone}
		for s, st := range want {
			if e, _ := l.Lookup(flG(s)); e.State != st {
				t.Errorf("%d: %v, want %v", s, e.State, st)
			}
		}
		if e, _ := l.Lookup(flG(121)); !e.Heuristic() {
			t.Errorf("the heuristic action on a done transaction was lost: %+v", e)
		}
		if err := l.Commit(ctx, flDecision(flG(4), "pg")); !errors.Is(err, ErrFenced) {
			t.Errorf("the abort recorded during the compaction does not fence: %v", err)
		}
	}
	check(l)
	if _, ok := l.Lookup(flG(110)); ok {
		t.Errorf("a transaction ended before the compaction is still known")
	}
	s := l.Stats()
	if s.Compactions != 1 || s.Entries > 6 {
		t.Errorf("stats after compaction: %+v", s)
	}
	if fi, err := os.Stat(filepath.Join(dir, logFileName)); err != nil || fi.Size() != s.Bytes {
		t.Errorf("file size %v, %v; stats say %d", fi.Size(), err, s.Bytes)
	}
	want := l.Entries()
	flClose(t, l)
	if rep, err := VerifyLog(dir); err != nil || !rep.Intact() {
		t.Fatalf("verify after a background compaction: %+v, %v", rep, err)
	}
	l2 := openFL(t, dir, clock, nil)
	check(l2)
	// The revived entry is listed where the new file holds its records
	// (after the compacted ones), not where its first record once was.
	byID := func(a, b Entry) int { return strings.Compare(a.GTRID.String(), b.GTRID.String()) }
	got := l2.Entries()
	slices.SortFunc(got, byID)
	slices.SortFunc(want, byID)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entries after reopen:\n got %+v\nwant %+v", got, want)
	}
}

// Many background compactions under concurrent commits, ends and aborts:
// nothing acknowledged is lost, and the file verifies intact.
func TestFileLogCompactionUnderLoad(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFLClock(flT0)
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, CompactBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 150
	var wg sync.WaitGroup
	pending := make([][]drivers.GlobalID, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				g := flG(uint32(w*10000 + i))
				if err := l.Commit(ctx, flDecision(g, "pg", "mysql")); err != nil {
					t.Error(err)
					return
				}
				switch i % 4 {
				case 0:
					pending[w] = append(pending[w], g)
				case 1:
					if err := l.Abort(ctx, Action{GTRID: flG(uint32(w*10000 + 5000 + i))}); err != nil {
						t.Error(err)
						return
					}
					fallthrough
				default:
					if err := l.End(g); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	s := l.Stats()
	t.Logf("stats: %+v", s)
	if s.Compactions == 0 {
		t.Fatalf("no compaction ran")
	}
	flClose(t, l)
	if rep, err := VerifyLog(dir); err != nil || !rep.Intact() {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	l2 := openFL(t, dir, clock, nil)
	got := map[string]bool{}
	for _, d := range l2.Pending() {
		got[d.GTRID.String()] = true
	}
	n := 0
	for _, ps := range pending {
		for _, g := range ps {
			n++
			if !got[g.String()] {
				t.Errorf("pending decision %s lost", g)
			}
		}
	}
	if len(got) != n {
		t.Errorf("%d pending after reopen, want %d", len(got), n)
	}
}
