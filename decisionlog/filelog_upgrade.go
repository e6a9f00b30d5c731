package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// upgrade rewrites a just-opened version-1 log (kept first as a backup,
// xabridge.log.v1) in version 2, with a header naming the node. Unlike a
// compaction it keeps every transaction (an ended one as a commit and an end
// record).
func (l *FileLog) upgrade() error {
	l.node = l.wantNode
	backup := filepath.Join(l.dir, v1BackupName)
	if _, err := os.Stat(backup); err == nil {
		backup = fmt.Sprintf("%s.%d", backup, time.Now().UnixNano())
	}
	if err := os.Link(l.path, backup); err != nil {
		return fmt.Errorf("decisionlog: keep a backup of version-1 log %s before converting it: %w", l.path, err)
	}
	if err := l.syncDir(); err != nil {
		return fmt.Errorf("decisionlog: keep a backup of version-1 log %s: %w", l.path, err)
	}
	// Every entry and every done transaction (as a commit and an end
	// record) go to the new file; the done set stays as it is.
	c := newCompaction([]*request{{done: make(chan error, 1)}})
	for _, e := range l.entries {
		c.keep(e, true)
	}
	l.done.each(func(g drivers.GlobalID, first uint32) {
		e := &entry{key: g.String(), gtrid: g, decision: &Decision{GTRID: g}}
		e.recs = []seqRecord{
			{seq: uint64(first), rec: &logRecord{kind: recCommit, key: e.key, gtrid: g, decision: e.decision}},
			{seq: uint64(first), rec: &logRecord{kind: recEnd, key: e.key, gtrid: g}},
		}
		c.keep(e, false)
	})
	l.batchSeq++
	l.snapshot(c)
	c.write(l)
	l.finishCompaction()
	if err := <-c.waiters[0].done; err != nil {
		return fmt.Errorf("decisionlog: rewrite %s in format 2: %w", l.path, err)
	}
	return nil
}

// writeFailMarker records, beside the log, that its writer fail-stopped
// and how far it was durable (see failStop).
func writeFailMarker(dir string, durable int64) error {
	path := filepath.Join(dir, failedFileName)
	if durable < readFailMarkerOr(dir, durable) {
		// An earlier failure of a previous open recorded less: keep it.
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "durable %d\n", durable)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err
}

// readFailMarker returns the durable offset a fail-stopped writer recorded,
// or -1.
func readFailMarker(dir string) int64 { return readFailMarkerOr(dir, -1) }

func readFailMarkerOr(dir string, def int64) int64 {
	b, err := os.ReadFile(filepath.Join(dir, failedFileName))
	if err != nil {
		return def
	}
	v, err := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(string(b)), "durable "), 10, 64)
	if err != nil || v < 0 {
		return def
	}
	return v
}

// clearFailMarker removes the marker once the open has cut what followed the
// durable offset and made the cut durable.
func clearFailMarker(dir string) error {
	err := os.Remove(filepath.Join(dir, failedFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove fail marker: %w", err)
	}
	return syncDir(dir)
}
