package decisionlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// flFrameOffsets returns the offset of every record frame (not the header,
// not the seals) of a well-formed log.
func flFrameOffsets(t *testing.T, data []byte) []int {
	t.Helper()
	var offs []int
	for off := len(logMagic); off < len(data); off += frameHeaderLen + int(binary.LittleEndian.Uint32(data[off:])) {
		rec, err := decodePayload(data[off+frameHeaderLen : off+frameHeaderLen+int(binary.LittleEndian.Uint32(data[off:]))])
		if err != nil {
			t.Fatalf("frame at %d: %v", off, err)
		}
		if !rec.kind.meta() {
			offs = append(offs, off)
		}
	}
	return offs
}

// flNewLogLen is the size of a new, empty log: the magic and the header.
func flNewLogLen(t *testing.T) int {
	t.Helper()
	dir := t.TempDir()
	l := openFL(t, dir, newFLClock(flT0), nil)
	flClose(t, l)
	return len(flReadLogFile(t, dir))
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
	newLen := flNewLogLen(t)

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
		roErr     error  // the read-only open's error (nil: as the writable open)
	}{
		{"intact", base, 3, 0, "", false, nil},
		{"torn frame header", base[:last+5], 2, last, "", false, nil},
		{"torn payload", base[:len(base)-3], 2, last, "", false, nil},
		{"bad crc at tail", flip(base, len(base)-4), 2, last, "", false, nil},
		{"bad length at tail", flip(base, last+1), 2, last, "", false, nil},
		{"garbage after last record", append(bytes.Clone(base), "some garbage that is not a frame"...), 3, len(base), "", false, nil},
		{"zeros after last record", append(bytes.Clone(base), make([]byte, 4096)...), 3, len(base), "", false, nil},
		{"flipped byte mid-file", flip(base, offs[1]+20), 0, 0, fmt.Sprintf("checksum mismatch at offset %d", offs[1]), true, nil},
		{"flipped byte in first record", flip(base, offs[0]+9), 0, 0, fmt.Sprintf("at offset %d", offs[0]), true, nil},
		{"invalid length mid-file", hugeLen, 0, 0, fmt.Sprintf("invalid record length %d at offset %d", 1<<30, offs[1]), true, nil},
		{"length past EOF mid-file", longLen, 0, 0, fmt.Sprintf("runs past the end of the file at offset %d", offs[1]), true, nil},
		{"valid frame, bad payload", append(bytes.Clone(base), badFrame...), 0, 0, fmt.Sprintf("offset %d: unknown record kind", len(base)), true, nil},
		{"header mismatch", append([]byte("NOTALOG\n"), base[8:]...), 0, 0, "not a xabridge decision log", false, nil},
		{"other file", []byte("hello world, this is a text file\n"), 0, 0, "not a xabridge decision log", false, nil},
		// Read-only openers never take a file without a header for an
		// empty log; a coordinator's writable open starts one in it.
		{"empty file", nil, 0, newLen, "", false, ErrNoLog},
		{"partial header", []byte("XABL"), 0, newLen, "", false, ErrNoLog},
		{"zero-filled", make([]byte, 4096), 0, newLen, "", false, ErrNoLog},
		{"magic only", []byte(logMagic), 0, newLen, "", false, ErrNoLog},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Read-only first: it must not change the file, and it sees
			// the same records (a torn tail is ignored).
			dir := flWriteLogFile(t, tt.data)
			ro, err := OpenFileLog(dir, FileLogOptions{ReadOnly: true, Now: clock.Now})
			if tt.roErr != nil {
				if !errors.Is(err, tt.roErr) {
					t.Fatalf("read-only open = %v, want %v", err, tt.roErr)
				}
			} else if tt.wantErr == "" && err != nil {
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
		if got := flReadLogFile(t, dir); !bytes.HasPrefix(got, []byte(logMagic)) || len(got) != flNewLogLen(t) {
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
