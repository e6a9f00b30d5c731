package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// failMark is what a fail-stopped writer left in xabridge.log.failed: the
// offset up to which the log was durable and the sequence number of the
// batch that ends there. durable is -1 when there is no marker.
type failMark struct {
	durable int64
	seq     uint64
}

var noFailMark = failMark{durable: -1}

// writeFailMarker records, beside the log, that its writer fail-stopped
// and how far it was durable (see failStop).
func writeFailMarker(dir string, m failMark) error {
	path := filepath.Join(dir, failedFileName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "durable %d batch %d\n", m.durable, m.seq)
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

// readFailMarker returns what a fail-stopped writer recorded, or
// noFailMark. A marker it cannot read is an error: the log's tail must not
// be trusted, and guessing how much could cut acknowledged records.
func readFailMarker(dir string) (failMark, error) {
	b, err := os.ReadFile(filepath.Join(dir, failedFileName))
	if errors.Is(err, os.ErrNotExist) {
		return noFailMark, nil
	}
	if err != nil {
		return noFailMark, fmt.Errorf("read fail marker: %w", err)
	}
	var m failMark
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "durable %d batch %d", &m.durable, &m.seq); err != nil || m.durable < 0 {
		return noFailMark, fmt.Errorf("fail marker %s holds %q: %w", filepath.Join(dir, failedFileName), b, ErrCorruptLog)
	}
	return m, nil
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
