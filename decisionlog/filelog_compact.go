package decisionlog

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// maybeCompact compacts when the file is past compactBytes and most of it is
// dead. After a check that does not compact, the next one waits until the
// file has grown by another half of compactBytes, so a log that is large
// because it is mostly live is not rescanned after every batch.
func (l *FileLog) maybeCompact() {
	if l.compactBytes < 0 || l.size <= l.compactBytes || l.size < l.nextCompact {
		return
	}
	now := l.now()
	live := int64(len(logMagic))
	l.mu.RLock() // End may end entries concurrently
	for _, e := range l.entries {
		if e.live(now) {
			live += e.bytes
		}
	}
	l.mu.RUnlock()
	if live*2 < l.size {
		// An error was either fail-stop (the next write reports it) or
		// left the old file in place, which is still a valid log.
		_ = l.compact()
	}
	l.nextCompact = l.size + l.compactBytes/2
}

// compact runs in the writer goroutine, between batches.
func (l *FileLog) compact() (err error) {
	if err := l.failure(); err != nil {
		return err
	}
	now := l.now()
	var keep []*entry
	var recs []seqRecord
	owner := make(map[*logRecord]*entry)
	// End may mark an entry ended while this runs; an entry kept anyway is
	// dropped by the next compaction, and its end record (queued behind
	// this compaction) goes to the new file.
	l.mu.RLock()
	for _, e := range l.entries {
		if e.live(now) {
			keep = append(keep, e)
			recs = append(recs, e.recs...)
			for _, sr := range e.recs {
				owner[sr.rec] = e
			}
		}
	}
	l.mu.RUnlock()
	// Records keep their original relative order, so Pending and Entries
	// come back in the same order after a reopen.
	slices.SortFunc(recs, func(a, b seqRecord) int { return compareSeq(a.seq, b.seq) })
	return l.rewrite(keep, recs, owner)
}

// rewrite replaces the log file with one holding the header and recs (the
// records of keep, in log order), and the in-memory state with keep. It runs
// in the writer goroutine (or at open, before it starts).
func (l *FileLog) rewrite(keep []*entry, recs []seqRecord, owner map[*logRecord]*entry) (err error) {
	tmp := filepath.Join(l.dir, compactFileName)
	raw, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
	}
	f := l.wrapFile(raw)
	renamed := false
	defer func() {
		if !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bytesOf := make(map[*entry]int64, len(keep))
	w := bufio.NewWriterSize(f, 256<<10)
	hdr, err := l.headerFrame()
	if err != nil {
		return fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
	}
	w.WriteString(logMagic)
	w.Write(hdr)
	size := int64(len(logMagic) + len(hdr))
	for _, sr := range recs {
		wr := sr.rec.wire()
		frame, err := encodeFrame(&wr)
		if err != nil {
			return fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
		}
		w.Write(frame)
		size += int64(len(frame))
		bytesOf[owner[sr.rec]] += int64(len(frame))
	}
	// One batch, sealed; once it is fsynced a second seal records it
	// durable, so that damage to it is never taken for a torn write.
	seq := l.batchSeq
	for i := range 2 {
		seal, err := encodeFrame(&wireRecord{Kind: recSeal.String(), At: l.now().UTC(), Seq: seq + 1, Durable: int64(i) * size})
		if err != nil {
			return fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
		}
		seq++
		w.Write(seal)
		size += int64(len(seal))
		if err := w.Flush(); err != nil {
			return fmt.Errorf("decisionlog: compact %s: write: %w", l.path, err)
		}
		if err := l.syncFile(f); err != nil {
			return fmt.Errorf("decisionlog: compact %s: fsync: %w", l.path, err)
		}
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
	}
	renamed = true
	old := l.file
	l.file = f
	old.Close()
	l.dirty = false // the new file holds everything and is fsynced

	l.mu.Lock()
	// The done set goes with the records compaction drops; an entry End
	// ended while this ran was written whole and goes back to it.
	l.entries = make(map[string]*entry, len(keep))
	l.done = doneSet{}
	for _, e := range keep {
		e.bytes = bytesOf[e]
		if e.ended && !e.heuristic {
			l.done.add(e.gtrid, e.first)
			continue
		}
		l.entries[e.key] = e
	}
	l.size = size
	l.batchSeq = seq
	l.durable = size
	l.mu.Unlock()

	// Until the rename is durable a crash could bring the old file back, and
	// with it lose whatever we append to the new one: fail-stop if unsure.
	if err := l.syncDir(); err != nil {
		return l.failStop("fsync directory after compaction of", err)
	}
	l.compactions.Add(1)
	return nil
}

func compareSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
