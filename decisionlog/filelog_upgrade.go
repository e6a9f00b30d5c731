package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// upgrade rewrites a just-opened log with a version-2 header naming the
// node: a version-1 log (kept first as a backup, xabridge.log.v1), or an
// unbound log opened by a node. Like a compaction it keeps the live state;
// the backup keeps a version-1 log's history.
func (l *FileLog) upgrade(version int) error {
	if l.node == "" {
		l.node = l.wantNode
	}
	if version == 1 {
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
	}
	if err := l.compact(); err != nil {
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
