package decisionlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// flBatches returns the [start, end) of every sealed batch of a well-formed
// version-2 log, and the offset just past the header.
func flBatches(t *testing.T, data []byte) (hdrEnd int, batches [][2]int) {
	t.Helper()
	start := -1
	for off := len(logMagic); off < len(data); {
		payload, next, problem := frameAt(data, off)
		if problem != "" {
			t.Fatalf("frame at %d: %s", off, problem)
		}
		rec, err := decodePayload(payload)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case rec.kind == recHeader:
			hdrEnd, start = next, next
		case rec.kind == recSeal:
			batches = append(batches, [2]int{start, next})
			start = next
		}
		off = next
	}
	return hdrEnd, batches
}

func flZero(data []byte, from, to int) []byte {
	d := bytes.Clone(data)
	clear(d[from:to])
	return d
}

// A zeroed region is cut when no later seal records it durable, and refused
// when one does: the seal of the next batch is written only after the
// previous fsync returned.
func TestFormatTornVersusAcknowledged(t *testing.T) {
	ctx := context.Background()
	clock := newFLClock(flT0)
	dir := t.TempDir()
	l := openFL(t, dir, clock, nil)
	flCommit(t, l, flDecision(flG(1), "pg"))
	flCommit(t, l, flDecision(flG(2), "pg"))
	if err := l.End(flG(1)); err != nil { // a lazy batch, no fsync of its own
		t.Fatal(err)
	}
	flCommit(t, l, flDecision(flG(3), "pg")) // its fsync covers the End
	flCommit(t, l, flDecision(flG(4), "pg"))
	flClose(t, l)
	base := flReadLogFile(t, dir)
	_, b := flBatches(t, base)
	// The End is a batch of its own, or rides with commit 3.
	if len(b) != 4 && len(b) != 5 {
		t.Fatalf("%d batches, want 4 or 5", len(b))
	}
	last, prev := len(b)-1, len(b)-2
	_ = ctx
	tests := []struct {
		name    string
		data    []byte
		wantCut int    // 0: refused
		wantErr string // substring of the refusal
		kept    []uint32
	}{
		{"last batch zeroed", flZero(base, b[last][0], b[last][1]-3), b[last][0], "", []uint32{1, 2, 3}},
		{"last batch's record zeroed, seal intact", flZero(base, b[last][0]+2, b[last][0]+20), b[last][0], "", []uint32{1, 2, 3}},
		{"last batch's seal torn", base[:b[last][1]-5], b[last][0], "", []uint32{1, 2, 3}},
		// The batch before was fsynced before the last one was written:
		// the last one's seal says so.
		{"acknowledged batch zeroed", flZero(base, b[prev][0]+1, b[prev][0]+30), 0, fmt.Sprintf("the seal of batch %d", len(b)), nil},
		{"first batch zeroed", flZero(base, b[0][0], b[0][1]), 0, fmt.Sprintf("at offset %d", b[0][0]), nil},
		{"acknowledged seal zeroed", flZero(base, b[1][1]-10, b[1][1]), 0, "records the log durable up to offset", nil},
		{"garbage after the end", append(bytes.Clone(base), "garbage"...), len(base), "", []uint32{1, 2, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := flWriteLogFile(t, tt.data)
			rep, err := VerifyLog(dir)
			if err != nil {
				t.Fatal(err)
			}
			l, oerr := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
			if tt.wantCut == 0 {
				if oerr == nil {
					l.Close()
					t.Fatalf("open succeeded, want a refusal")
				}
				if !errors.Is(oerr, ErrCorruptLog) || !strings.Contains(oerr.Error(), tt.wantErr) {
					t.Fatalf("open = %v, want ErrCorruptLog mentioning %q", oerr, tt.wantErr)
				}
				if rep.Damage == nil || rep.Intact() {
					t.Errorf("verify found no damage: %+v", rep)
				}
				if _, err := RepairLog(dir); !errors.Is(err, ErrCorruptLog) {
					t.Errorf("repair = %v, want a refusal", err)
				}
				if got := flReadLogFile(t, dir); !bytes.Equal(got, tt.data) {
					t.Errorf("a refused open or repair changed the file")
				}
				return
			}
			if oerr != nil {
				t.Fatalf("open: %v", oerr)
			}
			defer l.Close()
			if rep.Cut == nil || rep.Cut.Offset != int64(tt.wantCut) || rep.Cut.Length != int64(len(tt.data)-tt.wantCut) {
				t.Errorf("verify: cut %+v, want from %d", rep.Cut, tt.wantCut)
			}
			if got := len(flReadLogFile(t, dir)); got != tt.wantCut {
				t.Errorf("file is %d bytes after open, want %d", got, tt.wantCut)
			}
			for _, s := range tt.kept {
				if _, ok := l.Lookup(flG(s)); !ok {
					t.Errorf("acknowledged decision %d lost", s)
				}
			}
		})
	}
}

func TestVerifyAndRepair(t *testing.T) {
	clock := newFLClock(flT0)
	dir := t.TempDir()
	l := openFL(t, dir, clock, nil)
	for i := range 3 {
		flCommit(t, l, flDecision(flG(uint32(i)), "pg"))
	}
	flClose(t, l)
	base := flReadLogFile(t, dir)
	_, b := flBatches(t, base)
	torn := base[:b[2][1]-4] // the last seal torn: its commit is intact but never acknowledged
	dir = flWriteLogFile(t, torn)

	rep, err := VerifyLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Intact() || rep.Cut == nil || rep.Cut.Offset != int64(b[2][0]) || rep.Records != 2 || rep.Batches != 2 || rep.LastBatch != 2 {
		t.Fatalf("verify = %+v", rep)
	}
	if want := "commit " + flG(2).String(); len(rep.Cut.Records) != 1 || !strings.HasPrefix(rep.Cut.Records[0], want) {
		t.Errorf("cut records = %q, want %q", rep.Cut.Records, want)
	}
	if got := flReadLogFile(t, dir); !bytes.Equal(got, torn) {
		t.Fatalf("verify changed the file")
	}

	// Repair needs the lock.
	held := openFLNoCleanup(t, dir, clock)
	if _, err := RepairLog(dir); !errors.Is(err, ErrLogLocked) {
		t.Errorf("repair of a locked log = %v", err)
	}
	held.Close()
	dir = flWriteLogFile(t, torn)
	rep, err = RepairLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Saved == "" {
		t.Fatalf("repair kept no copy: %+v", rep)
	}
	saved, err := os.ReadFile(rep.Saved)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(saved, torn[b[2][0]:]) {
		t.Errorf("the copy holds %d bytes, want the %d cut", len(saved), len(torn)-b[2][0])
	}
	if got := flReadLogFile(t, dir); !bytes.Equal(got, base[:b[2][0]]) {
		t.Errorf("repaired file is %d bytes, want %d", len(got), b[2][0])
	}
	if rep, err := VerifyLog(dir); err != nil || !rep.Intact() {
		t.Errorf("verify after repair = %+v, %v", rep, err)
	}
	if rep, err := RepairLog(dir); err != nil || rep.Saved != "" {
		t.Errorf("repair of an intact log = %+v, %v", rep, err)
	}

	t.Run("no log", func(t *testing.T) {
		dir := flWriteLogFile(t, make([]byte, 512))
		if rep, err := VerifyLog(dir); err != nil || rep.Intact() || rep.Version != 0 {
			t.Errorf("verify of a zero-filled file = %+v, %v", rep, err)
		}
		if _, err := RepairLog(dir); !errors.Is(err, ErrNoLog) {
			t.Errorf("repair of a zero-filled file = %v, want ErrNoLog", err)
		}
	})
}

func openFLNoCleanup(t *testing.T, dir string, clock *flClock) *FileLog {
	t.Helper()
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A log belongs to the node that created it.
func TestFileLogNode(t *testing.T) {
	clock := newFLClock(flT0)
	dir := t.TempDir()
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	flCommit(t, l, flDecision(flG(1), "pg"))
	flClose(t, l)
	tests := []struct {
		node     string
		readOnly bool
		wantErr  error
	}{
		{"node-1", false, nil},
		{"node-2", false, ErrWrongNode},
		{"node-2", true, ErrWrongNode},
		{"", true, nil},
		{"", false, nil},
	}
	for _, tt := range tests {
		l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, Node: tt.node, ReadOnly: tt.readOnly})
		if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
			t.Errorf("open as %q (read-only %v) = %v, want %v", tt.node, tt.readOnly, err, tt.wantErr)
		}
		if err == nil {
			if l.Node() != "node-1" {
				t.Errorf("Node() = %q", l.Node())
			}
			if _, ok := l.Lookup(flG(1)); !ok {
				t.Errorf("decision lost")
			}
			l.Close()
		}
	}
	// Compaction keeps the node.
	l, err = OpenFileLog(dir, FileLogOptions{Now: clock.Now, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	flClose(t, l)
	if _, err := OpenFileLog(dir, FileLogOptions{Node: "node-2", ReadOnly: true}); !errors.Is(err, ErrWrongNode) {
		t.Errorf("after compaction: open as another node = %v", err)
	}
}

// A version-1 log opens; a writable open converts it once, keeping a backup.
func TestFileLogVersion1(t *testing.T) {
	clock := newFLClock(flT0)
	v1 := []byte(logMagicV1)
	for i, w := range []wireRecord{
		{Kind: "commit", GTRID: flG(1).String(), At: flT0, Participants: []Participant{{Resource: "pg", Branch: 0}}},
		{Kind: "commit", GTRID: flG(2).String(), At: flT0, Participants: []Participant{{Resource: "pg", Branch: 0}, {Resource: "mysql", Branch: 1}}},
		{Kind: "end", GTRID: flG(1).String(), At: flT0},
		{Kind: "abort", GTRID: flG(3).String(), At: flT0, Op: "abort"},
	} {
		frame, err := encodeFrame(&w)
		if err != nil {
			t.Fatal(i, err)
		}
		v1 = append(v1, frame...)
	}
	check := func(t *testing.T, l *FileLog) {
		t.Helper()
		want := map[uint32]State{1: StateDone, 2: StateCommitted, 3: StateAborted}
		for s, st := range want {
			if e, _ := l.Lookup(flG(s)); e.State != st {
				t.Errorf("%d: %v, want %v", s, e.State, st)
			}
		}
	}
	t.Run("read-only", func(t *testing.T) {
		dir := flWriteLogFile(t, append(bytes.Clone(v1), 1, 2, 3)) // and a torn tail
		l, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		check(t, l)
		if rep, err := VerifyLog(dir); err != nil || rep.Version != 1 || rep.Cut == nil || rep.Cut.Offset != int64(len(v1)) {
			t.Errorf("verify = %+v, %v", rep, err)
		}
	})
	t.Run("converted", func(t *testing.T) {
		dir := flWriteLogFile(t, v1)
		l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, Node: "node-1"})
		if err != nil {
			t.Fatal(err)
		}
		check(t, l)
		flCommit(t, l, flDecision(flG(4), "pg"))
		flClose(t, l)
		backup, err := os.ReadFile(filepath.Join(dir, v1BackupName))
		if err != nil || !bytes.Equal(backup, v1) {
			t.Fatalf("backup: %v (%d bytes, want %d)", err, len(backup), len(v1))
		}
		if data := flReadLogFile(t, dir); !bytes.HasPrefix(data, []byte(logMagic)) {
			t.Fatalf("not converted: %q", data[:8])
		}
		l = openFL(t, dir, clock, nil)
		if l.Node() != "node-1" {
			t.Errorf("converted log's node = %q", l.Node())
		}
		if e, _ := l.Lookup(flG(4)); e.State != StateCommitted {
			t.Errorf("decision after conversion lost")
		}
		if e, _ := l.Lookup(flG(2)); e.State != StateCommitted || len(e.Decision.Participants) != 2 {
			t.Errorf("pending decision after conversion = %+v", e)
		}
		if e, _ := l.Lookup(flG(3)); e.State != StateAborted {
			t.Errorf("abort after conversion = %+v", e)
		}
	})
}

// After a failed fsync the log's writer leaves a marker; the next open does
// not trust what followed the durable offset, even though the page cache
// (here: the file) still shows it intact, and keeps a copy of it.
func TestFileLogFailMarker(t *testing.T) {
	ctx := context.Background()
	clock := newFLClock(flT0)
	dir := t.TempDir()
	fa := &flFaults{}
	l := openFL(t, dir, clock, fa)
	flCommit(t, l, flDecision(flG(1), "pg"))
	durable := l.Stats().Bytes
	fa.set(func(fa *flFaults) { fa.syncErr = errors.New("injected EIO") })
	if err := l.Commit(ctx, flDecision(flG(2), "pg")); !errors.Is(err, ErrLogFailed) {
		t.Fatalf("commit = %v, want ErrLogFailed", err)
	}
	_ = l.Close()
	if got, err := readFailMarker(dir); err != nil || got != (failMark{durable, 1}) {
		t.Fatalf("fail marker = %+v, %v; want durable %d after batch 1", got, err, durable)
	}
	marker, _ := os.ReadFile(filepath.Join(dir, failedFileName))
	image := flReadLogFile(t, dir)
	rep, err := VerifyLog(dir)
	if err != nil || rep.Cut == nil || rep.Cut.Offset != durable || rep.FailMarker != durable {
		t.Fatalf("verify = %+v, %v", rep, err)
	}
	l = openFL(t, dir, clock, nil)
	if _, ok := l.Lookup(flG(2)); ok {
		t.Errorf("the record whose fsync failed was replayed")
	}
	if _, ok := l.Lookup(flG(1)); !ok {
		t.Errorf("the durable decision was lost")
	}
	if s := l.Stats(); s.Bytes != durable || s.TruncatedBytes == 0 {
		t.Errorf("stats after open: %+v", s)
	}
	if m, err := readFailMarker(dir); err != nil || m != noFailMark {
		t.Errorf("the marker was not removed: %+v, %v", m, err)
	}
	copies, _ := filepath.Glob(filepath.Join(dir, logFileName+".cut-*"))
	if len(copies) != 1 {
		t.Errorf("copies of the cut region: %v", copies)
	}
	flCommit(t, l, flDecision(flG(3), "pg"))
	flClose(t, l)

	// A marker that does not describe the log (left beside a log restored
	// from a copy, or a log cut short) is refused, not obeyed.
	for _, tc := range []struct {
		name   string
		log    []byte
		marker string
		want   string
	}{
		{"log shorter than the durable offset", image[:durable-5], string(marker), "acknowledged records are missing"},
		{"another log's marker", image, "durable 20 batch 0\n", "the marker is not this log's"},
		{"unreadable marker", image, "garbage\n", "fail marker"},
		{"log zeroed", make([]byte, len(image)), string(marker), "acknowledged records are missing"},
		{"header torn", image[:20], string(marker), "acknowledged records are missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := flWriteLogFile(t, tc.log)
			if err := os.WriteFile(filepath.Join(dir, failedFileName), []byte(tc.marker), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenFileLog(dir, FileLogOptions{}); !errors.Is(err, ErrCorruptLog) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open = %v, want ErrCorruptLog mentioning %q", err, tc.want)
			}
			if rep, err := VerifyLog(dir); err != nil || rep.Damage == nil {
				t.Fatalf("verify = %+v, %v", rep, err)
			}
			if got := flReadLogFile(t, dir); !bytes.Equal(got, tc.log) {
				t.Fatalf("the log was changed")
			}
		})
	}
}

// An operator's action after a transaction ended brings its entry back
// whole; it replays and compacts as done.
func TestFileLogActionAfterEnd(t *testing.T) {
	ctx := context.Background()
	clock := newFLClock(flT0)
	dir := t.TempDir()
	l := openFL(t, dir, clock, nil)
	g := flG(1)
	flCommit(t, l, flDecision(g, "pg", "mysql"))
	if err := l.End(g); err != nil {
		t.Fatal(err)
	}
	if s := l.Stats(); s.Done != 1 {
		t.Fatalf("stats = %+v, want one done", s)
	}
	if err := l.Record(ctx, Action{GTRID: g, Resource: "pg", Op: "rollback", Heuristic: true}); err != nil {
		t.Fatal(err)
	}
	check := func(l *FileLog) {
		t.Helper()
		e, ok := l.Lookup(g)
		if !ok || e.State != StateDone || !e.Heuristic() || len(e.Actions) != 1 {
			t.Errorf("entry = %+v", e)
		}
		if err := l.Abort(ctx, Action{GTRID: g}); !errors.Is(err, ErrAlreadyCommitted) {
			t.Errorf("abort = %v", err)
		}
	}
	check(l)
	if err := l.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	check(l)
	flClose(t, l)
	check(openFL(t, dir, clock, nil))
}

// The hand-written seal is the frame encodeFrame makes of the same record.
func TestSealFrameMatchesEncoder(t *testing.T) {
	at := time.Date(2031, 1, 2, 3, 4, 5, 600700800, time.UTC)
	for _, tc := range []struct {
		seq     uint64
		durable int64
	}{{1, 0}, {7, 4096}, {1 << 40, 1 << 50}} {
		want, err := encodeFrame(&wireRecord{Kind: recSeal.String(), At: at, Seq: tc.seq, Durable: tc.durable})
		if err != nil {
			t.Fatal(err)
		}
		if got := appendSealFrame([]byte("x"), tc.seq, tc.durable, at); !bytes.Equal(got[1:], want) {
			t.Errorf("seal %+v:\n got %q\nwant %q", tc, got[1:], want)
		}
	}
}

// NoCreate: a writable open for an operator tool never starts a log.
func TestFileLogNoCreate(t *testing.T) {
	tests := []struct {
		name string
		data []byte // nil: no file
	}{
		{"no file", nil},
		{"empty", []byte{}},
		{"zero-filled", make([]byte, 4096)},
		{"partial magic", []byte("XAB")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.data != nil {
				dir = flWriteLogFile(t, tt.data)
			}
			l, err := OpenFileLog(dir, FileLogOptions{NoCreate: true})
			if !errors.Is(err, ErrNoLog) {
				if err == nil {
					l.Close()
				}
				t.Fatalf("open = %v, want ErrNoLog", err)
			}
			data, rerr := os.ReadFile(filepath.Join(dir, logFileName))
			if tt.data == nil && !errors.Is(rerr, os.ErrNotExist) || tt.data != nil && !bytes.Equal(data, tt.data) {
				t.Fatalf("the file was created or changed: %q, %v", data, rerr)
			}
		})
	}
	dir := t.TempDir()
	flClose(t, openFL(t, dir, newFLClock(flT0), nil))
	l, err := OpenFileLog(dir, FileLogOptions{NoCreate: true})
	if err != nil {
		t.Fatalf("NoCreate open of an existing log: %v", err)
	}
	flClose(t, l)
}
