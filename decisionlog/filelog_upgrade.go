package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	var keep []*entry
	var recs []seqRecord
	owner := make(map[*logRecord]*entry)
	for _, e := range l.entries {
		keep = append(keep, e)
	}
	l.done.each(func(g drivers.GlobalID, first uint32) {
		e := &entry{key: g.String(), gtrid: g, first: uint64(first), decision: &Decision{GTRID: g}, decSeq: uint64(first), ended: true}
		e.recs = []seqRecord{
			{seq: uint64(first), rec: &logRecord{kind: recCommit, key: e.key, gtrid: g, decision: e.decision}},
			{seq: uint64(first), rec: &logRecord{kind: recEnd, key: e.key, gtrid: g}},
		}
		keep = append(keep, e)
	})
	for _, e := range keep {
		recs = append(recs, e.recs...)
		for _, sr := range e.recs {
			owner[sr.rec] = e
		}
	}
	slices.SortStableFunc(recs, func(a, b seqRecord) int { return compareSeq(a.seq, b.seq) })
	if err := l.rewrite(keep, recs, owner); err != nil {
		return fmt.Errorf("decisionlog: rewrite %s with a version-2 header: %w", l.path, err)
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
