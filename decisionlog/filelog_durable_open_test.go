package decisionlog

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
)

// A commit record written but never fsynced (the process died between its
// write and its fsync, or the fsync failed) is still in the page cache at
// the next start. Opening the log makes it durable (file and directory)
// before the coordinator resumes its phase 2: otherwise a power loss could
// take back a decision whose branches already committed.
func TestOpenMakesReplayedRecordsDurable(t *testing.T) {
	clock := newFLClock(flT0)
	dir := t.TempDir()
	fa := &flFaults{}
	l := openFL(t, dir, clock, fa)
	g := flG(7)
	fa.set(func(fa *flFaults) { fa.syncErr = errors.New("EIO") })
	if err := l.Commit(context.Background(), flDecision(g, "a", "b")); !errors.Is(err, ErrLogFailed) {
		t.Fatalf("Commit = %v, want ErrLogFailed", err)
	}
	_ = l.Close()

	var dirSyncs atomic.Int64
	l2, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now, hooks: &fileLogHooks{
		syncDir: func(string) error { dirSyncs.Add(1); return nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if s := l2.Stats(); s.Syncs < 2 || dirSyncs.Load() < 1 {
		t.Fatalf("open made %d fsyncs (%d of the directory), want the file and its directory", s.Syncs, dirSyncs.Load())
	}
	// OpenFileLog returns only after those fsyncs, so a coordinator that
	// resumes phase 2 on what it replays acts on durable decisions only.
}

// A crash while the log file was created can leave its size on disk but
// not its bytes (zeros): nothing was acknowledged yet, so the log starts
// afresh instead of refusing to open.
func TestOpenZeroHeaderStartsAfresh(t *testing.T) {
	for _, n := range []int{1, len(logMagic)} {
		dir := flWriteLogFile(t, make([]byte, n))
		l, err := OpenFileLog(dir, FileLogOptions{})
		if err != nil {
			t.Fatalf("%d zero bytes: %v", n, err)
		}
		if len(l.Entries()) != 0 {
			t.Errorf("%d zero bytes: entries %v", n, l.Entries())
		}
		_ = l.Close()
	}
}

// Directories the log creates are made durable in their parents, so a
// power loss cannot take the log directory away with its decisions.
func TestOpenMakesNewDirectoriesDurable(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "x", "y")
	var synced []string
	l, err := OpenFileLog(dir, FileLogOptions{hooks: &fileLogHooks{
		syncDir: func(d string) error { synced = append(synced, d); return nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, want := range []string{base, filepath.Join(base, "x"), dir} {
		if !slices.Contains(synced, want) {
			t.Errorf("directory %s not fsynced (fsynced: %v)", want, synced)
		}
	}
}
