package decisionlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/xabridge/xabridge/drivers"
)

// Compaction runs beside the writer, so commits do not wait for it:
//
//  1. snapshot (writer goroutine, under mu): the live entries and their
//     records, the file size, and the done set, which is set aside (still
//     answered from) while new ends go to a fresh one;
//  2. write (its own goroutine): the header, the live records and a seal
//     into xabridge.log.compact, fsynced; meanwhile the writer keeps
//     appending batches to the old file;
//  3. swap (writer goroutine, between batches): the batches appended since
//     the snapshot are copied over (their seals' durable offsets, which
//     name offsets of the old file, zeroed), fsynced, the file renamed over
//     the log, and a seal recording the new file durable appended; then the
//     in-memory state drops what the new file does not hold.
//
// Commits wait only for step 3, whose cost is that of the batches written
// during step 2.
type compaction struct {
	snapSize  int64            // old-file size at the snapshot: the tail starts here
	snapSeq   uint64           // records applied at the snapshot
	sealSeq   uint64           // batch sequence number reserved for the compacted batch
	keepBytes map[*entry]int64 // the kept entries, with their bytes at the snapshot
	bytesOf   map[*entry]int64 // their bytes in the new file
	recs      []seqRecord      // what step 2 writes, in log order
	owner     map[*logRecord]*entry
	waiters   []*request // Compact callers

	f    logFile // the new file, written and fsynced by step 2
	size int64
	err  error
}

// maybeCompact compacts when the file is past compactBytes and most of it is
// dead. After a check that does not compact, the next one waits until the
// file has grown by another half of compactBytes, so a log that is large
// because it is mostly live is not rescanned after every batch.
func (l *FileLog) maybeCompact() {
	if l.compacting != nil || l.compactBytes < 0 || l.size <= l.compactBytes || l.size < l.nextCompact {
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
		l.startCompaction(nil, true)
	}
	l.nextCompact = l.size + l.compactBytes/2
}

// requestCompaction handles a Compact call: it starts a compaction, or
// queues the caller for the one after the compaction in flight (which may
// have missed what the caller wants dropped).
func (l *FileLog) requestCompaction(r *request) {
	if l.compacting != nil {
		l.compactWait = append(l.compactWait, r)
		return
	}
	l.startCompaction([]*request{r}, true)
}

// startCompaction takes the snapshot (step 1) and starts step 2, in a
// goroutine when async (else the caller runs write and finishCompaction).
func (l *FileLog) startCompaction(waiters []*request, async bool) *compaction {
	if err := l.failure(); err != nil {
		for _, r := range waiters {
			reply(r, err)
		}
		return nil
	}
	now := l.now()
	c := newCompaction(waiters)
	l.mu.Lock()
	for _, e := range l.entries {
		if e.live(now) {
			c.keep(e, true)
		}
	}
	// Ends from now on go to a fresh set; the old one is answered from
	// until the swap forgets it with the records it stands for.
	l.oldDone, l.done = l.done, doneSet{}
	l.oldDone.flush()
	l.batchSeq++
	l.mu.Unlock()
	l.snapshot(c)
	if async {
		go func() {
			c.write(l)
			l.qmu.Lock()
			l.compactReady = true
			l.qcond.Signal()
			l.qmu.Unlock()
		}()
	}
	return c
}

func newCompaction(waiters []*request) *compaction {
	return &compaction{keepBytes: map[*entry]int64{}, bytesOf: map[*entry]int64{}, owner: map[*logRecord]*entry{}, waiters: waiters}
}

// keep adds e's records to the snapshot; inMap says e is in l.entries (the
// swap then updates its bytes). Callers hold mu.
func (c *compaction) keep(e *entry, inMap bool) {
	if inMap {
		c.keepBytes[e] = e.bytes
	}
	c.recs = append(c.recs, e.recs...)
	for _, sr := range e.recs {
		c.owner[sr.rec] = e
	}
}

// snapshot completes step 1 once the records are taken and l.batchSeq was
// advanced to reserve the compacted batch's sequence number.
func (l *FileLog) snapshot(c *compaction) {
	c.sealSeq, c.snapSize, c.snapSeq = l.batchSeq, l.size, l.seq
	// Records keep their original relative order, so Pending and Entries
	// come back in the same order after a reopen.
	slices.SortStableFunc(c.recs, func(a, b seqRecord) int { return compareSeq(a.seq, b.seq) })
	l.compacting = c
}

// write is step 2: the compacted file, fsynced. It reads only the snapshot.
func (c *compaction) write(l *FileLog) {
	fail := func(err error) {
		c.err = fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
		if c.f != nil {
			c.f.Close()
		}
		os.Remove(filepath.Join(l.dir, compactFileName))
	}
	raw, err := os.OpenFile(filepath.Join(l.dir, compactFileName), os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		fail(err)
		return
	}
	c.f = l.wrapFile(raw)
	w := bufio.NewWriterSize(c.f, 256<<10)
	hdr, err := l.headerFrame()
	if err != nil {
		fail(err)
		return
	}
	w.WriteString(logMagic)
	w.Write(hdr)
	c.size = int64(len(logMagic) + len(hdr))
	for _, sr := range c.recs {
		wr := sr.rec.wire()
		frame, err := encodeFrame(&wr)
		if err != nil {
			fail(err)
			return
		}
		w.Write(frame)
		c.size += int64(len(frame))
		c.bytesOf[c.owner[sr.rec]] += int64(len(frame))
	}
	seal, err := encodeFrame(&wireRecord{Kind: recSeal.String(), At: l.now().UTC(), Seq: c.sealSeq})
	if err != nil {
		fail(err)
		return
	}
	w.Write(seal)
	c.size += int64(len(seal))
	if err := w.Flush(); err != nil {
		fail(fmt.Errorf("write: %w", err))
		return
	}
	if err := l.syncFile(c.f); err != nil {
		fail(fmt.Errorf("fsync: %w", err))
	}
}

// finishCompaction is step 3, in the writer goroutine.
func (l *FileLog) finishCompaction() {
	c := l.compacting
	l.compacting = nil
	err := c.err
	if err == nil {
		err = l.failure()
		if err != nil {
			c.f.Close()
			os.Remove(filepath.Join(l.dir, compactFileName))
		}
	}
	if err == nil {
		err = l.swap(c)
	}
	if err != nil && !errors.Is(err, ErrLogFailed) {
		// The old file is still the log: its ends are done again.
		l.mu.Lock()
		l.oldDone.each(func(g drivers.GlobalID, first uint32) { l.done.add(g, uint64(first)) })
		l.oldDone = doneSet{}
		l.mu.Unlock()
	}
	if err == nil {
		l.compactions.Add(1)
	}
	for _, r := range c.waiters {
		reply(r, err)
	}
	if next := l.compactWait; len(next) > 0 {
		l.compactWait = nil
		l.startCompaction(next, true)
	}
}

// swap copies the tail written since the snapshot to the new file, renames
// it over the log and swaps the in-memory state. An error before the rename
// leaves the old file as the log; after it, it is fail-stop.
func (l *FileLog) swap(c *compaction) error {
	tmp := filepath.Join(l.dir, compactFileName)
	abandon := func(err error) error {
		c.f.Close()
		os.Remove(tmp)
		return fmt.Errorf("decisionlog: compact %s: %w", l.path, err)
	}
	tail, err := l.tailSince(c)
	if err != nil {
		return abandon(err)
	}
	if len(tail) > 0 {
		if _, err := c.f.Write(tail); err != nil {
			return abandon(fmt.Errorf("write: %w", err))
		}
		if err := l.syncFile(c.f); err != nil {
			return abandon(fmt.Errorf("fsync: %w", err))
		}
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return abandon(err)
	}
	old := l.file
	l.file = c.f
	old.Close()
	l.dirty = false // the new file holds everything and is fsynced
	size := c.size + int64(len(tail))

	l.mu.Lock()
	for _, e := range l.entries {
		if at, ok := c.keepBytes[e]; ok {
			e.bytes = c.bytesOf[e] + e.bytes - at
			continue
		}
		if e.decision == nil {
			// Dead at the snapshot: only its records since are left.
			l.trimTo(e, c.snapSeq)
		}
	}
	l.oldDone = doneSet{}
	l.size, l.durable, l.durableSeq = size, size, l.batchSeq
	l.mu.Unlock()
	l.nextCompact = 0 // the file shrank: check again once it passes compactBytes

	// Until the rename is durable a crash could bring the old file back, and
	// with it lose whatever we append to the new one: fail-stop if unsure.
	if err := l.syncDir(); err != nil {
		return l.failStop("fsync directory after compaction of", err)
	}
	// A seal recording the new file durable: damage to the compacted
	// records is then never taken for a torn write.
	seal, err := l.appendSeal(nil)
	if err != nil {
		return l.failStop("encode seal of", err)
	}
	if err := l.writeSync(seal); err != nil {
		return err
	}
	l.mu.Lock()
	l.batchSeq++
	l.size += int64(len(seal))
	l.durable, l.durableSeq = l.size, l.batchSeq
	l.mu.Unlock()
	return nil
}

// trimTo drops e's records up to seq (not in the new file); e goes when
// none is left. Callers hold mu.
func (l *FileLog) trimTo(e *entry, seq uint64) {
	i := 0
	for i < len(e.recs) && e.recs[i].seq <= seq {
		i++
	}
	e.recs = slices.Delete(e.recs, 0, i)
	if len(e.recs) == 0 {
		delete(l.entries, e.key)
		return
	}
	e.first, e.aborted, e.heuristic = e.recs[0].seq, false, false
	for _, sr := range e.recs {
		switch sr.rec.kind {
		case recAbort:
			e.aborted = true
			e.heuristic = e.heuristic || sr.rec.action.Heuristic
		case recAction:
			e.heuristic = e.heuristic || sr.rec.action.Heuristic
		}
	}
}

// tailSince returns what the new file needs besides the snapshot: the
// commit and end records standing for transactions revived from the old
// done set since the snapshot, then the batches appended to the old file
// since, with their seals' durable offsets zeroed (they name offsets of the
// old file). The revived records join the first of those batches.
func (l *FileLog) tailSince(c *compaction) ([]byte, error) {
	var out []byte
	l.mu.RLock()
	for _, e := range l.entries {
		if _, kept := c.keepBytes[e]; kept || !e.revived {
			continue
		}
		for _, sr := range e.recs[:2] { // revive's commit and end
			{
				wr := sr.rec.wire()
				frame, err := encodeFrame(&wr)
				if err != nil {
					l.mu.RUnlock()
					return nil, err
				}
				out = append(out, frame...)
			}
		}
	}
	l.mu.RUnlock()
	if l.size == c.snapSize {
		return out, nil
	}
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := make([]byte, l.size-c.snapSize)
	if _, err := f.ReadAt(data, c.snapSize); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for off := 0; off < len(data); {
		payload, next, problem := frameAt(data, off)
		if problem != "" {
			return nil, fmt.Errorf("the log's own tail at offset %d: %s", c.snapSize+int64(off), problem)
		}
		rec, err := decodePayload(payload)
		if err != nil {
			return nil, err
		}
		if rec.kind == recSeal {
			frame, err := encodeFrame(&wireRecord{Kind: recSeal.String(), At: rec.at, Seq: rec.seq})
			if err != nil {
				return nil, err
			}
			out = append(out, frame...)
		} else {
			out = append(out, data[off:next]...)
		}
		off = next
	}
	return out, nil
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
