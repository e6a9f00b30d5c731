package decisionlog

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"
)

// submit encodes w, hands it to the writer and waits for the batch result.
func (l *FileLog) submit(ctx context.Context, w *wireRecord, op string) error {
	rec, frame, err := prepareRecord(w)
	if err != nil {
		return fmt.Errorf("decisionlog: %s: %w", op, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("decisionlog: %s %s: %w", op, rec.key, err)
	}
	r := &request{rec: rec, frame: frame, done: make(chan error, 1)}
	if err := l.enqueue(r); err != nil {
		return fmt.Errorf("decisionlog: %s %s: %w", op, rec.key, err)
	}
	// ctx is deliberately not watched from here on: the record now belongs
	// to the writer and may become durable at any moment. Returning early
	// would turn a commit that does happen into an unknown outcome for the
	// caller, so we wait for the batch (one fsync) to settle it.
	return <-r.done
}

func (l *FileLog) enqueue(r *request) error {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	if l.closed {
		return ErrLogClosed
	}
	if l.failed != nil {
		return l.failed
	}
	l.queue = append(l.queue, r)
	l.qcond.Signal()
	if l.delayNeed > 0 && len(l.queue) >= l.delayNeed {
		l.wakeDelay()
	}
	return nil
}

// wakeDelay ends the writer's commit delay early; qmu is held.
func (l *FileLog) wakeDelay() {
	select {
	case l.delayWake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine: it takes whatever was queued while the last
// batch was being written and fsynced, and writes it as the next batch.
// Batching comes from that alone, without any timer.
func (l *FileLog) run() {
	defer close(l.writerDone)
	for {
		batch, swap := l.take()
		if swap {
			l.finishCompaction()
			continue
		}
		if batch == nil {
			l.syncLazy()
			return
		}
		if l.commitDelay > 0 && l.lastWaiters > 1 && !batch[0].compact && len(batch) < l.maxBatch && anyWaiter(batch) {
			// PostgreSQL's commit_delay: decisions arriving meanwhile share
			// this batch's fsync. Only when the last batch held several
			// (decisions arrive concurrently; a lone client never waits).
			// The wait ends early once a full batch is queued, or at Close.
			l.delayFor(l.maxBatch - len(batch))
			batch = l.takeMore(batch)
		}
		if batch[0].compact {
			l.requestCompaction(batch[0])
		} else {
			l.writeBatch(batch)
		}
		clear(batch)
	}
}

// take waits for requests and returns the next batch: up to maxBatch records,
// or one compaction request; or swap = true when the compaction in flight
// has written its file. It returns nil once the log is closed and drained
// and no compaction is in flight.
func (l *FileLog) take() (batch []*request, swap bool) {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	for len(l.queue) == 0 && !l.compactReady {
		if l.closed && l.compacting == nil {
			return nil, false
		}
		l.qcond.Wait()
	}
	if l.compactReady {
		l.compactReady = false
		return nil, true
	}
	n := 1
	if !l.queue[0].compact {
		for n < len(l.queue) && n < l.maxBatch && !l.queue[n].compact {
			n++
		}
	}
	l.taken = append(l.taken[:0], l.queue[:n]...)
	rest := copy(l.queue, l.queue[n:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	return l.taken, false
}

// delayFor waits CommitDelay, or until need more records are queued, or
// until Close.
func (l *FileLog) delayFor(need int) {
	l.qmu.Lock()
	if len(l.queue) >= need || l.closed {
		l.qmu.Unlock()
		return
	}
	l.delayNeed = need
	l.qmu.Unlock()
	t := time.NewTimer(l.commitDelay)
	select {
	case <-t.C:
	case <-l.delayWake:
		t.Stop()
	}
	l.qmu.Lock()
	l.delayNeed = 0
	l.qmu.Unlock()
	select {
	case <-l.delayWake: // drop a wake-up that raced with the timer
	default:
	}
}

// takeMore appends to batch the records queued since it was taken, up to
// maxBatch and stopping at a compaction.
func (l *FileLog) takeMore(batch []*request) []*request {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	n := 0
	for n < len(l.queue) && len(batch)+n < l.maxBatch && !l.queue[n].compact {
		n++
	}
	batch = append(batch, l.queue[:n]...)
	rest := copy(l.queue, l.queue[n:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	l.taken = batch
	return batch
}

// anyWaiter reports whether a caller waits for some request of batch.
func anyWaiter(batch []*request) bool {
	for _, r := range batch {
		if r.done != nil {
			return true
		}
	}
	return false
}

// syncLazy fsyncs records written without an fsync (End records), at Close.
func (l *FileLog) syncLazy() {
	if !l.dirty || l.failure() != nil {
		return
	}
	if err := l.syncFile(l.file); err != nil {
		_ = l.failStop("fsync", err)
		return
	}
	l.dirty = false
}

func (l *FileLog) failure() error {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	return l.failed
}

// failStop records the failure that stops the log and returns it. It runs
// in the writer goroutine. It also leaves a marker with the offset up to
// which the log was durable (best effort: the disk may be failing): the
// bytes after it belong to writes whose fsync failed or never came, so no
// caller was told they are durable, and the next open must not trust them
// even if the page cache still shows them intact.
func (l *FileLog) failStop(what string, err error) error {
	f := fmt.Errorf("%w (refusing writes until reopened): %s %s: %w", ErrLogFailed, what, l.path, err)
	l.qmu.Lock()
	first := l.failed == nil
	if first {
		l.failed = f
	}
	l.qmu.Unlock()
	if first {
		_ = writeFailMarker(l.dir, failMark{durable: l.durable, seq: l.durableSeq})
	}
	return f
}

func reply(r *request, err error) {
	if r.done != nil {
		r.done <- err
	}
}

// writeBatch decides every request of the batch in queue order (this is
// where the fence is enforced), writes the accepted records with one write
// and one fsync, applies them to the in-memory state and answers the
// waiters.
func (l *FileLog) writeBatch(batch []*request) {
	if err := l.failure(); err != nil {
		for _, r := range batch {
			reply(r, err)
		}
		return
	}
	now := l.now()
	clear(l.overlay)
	l.buf = l.buf[:0]
	l.verdicts = slices.Grow(l.verdicts[:0], len(batch))[:len(batch)]
	// End (from callers' goroutines) moves entries to the done set under
	// mu; everything else here is only written by this goroutine.
	l.mu.RLock()
	for i, r := range batch {
		v := &l.verdicts[i]
		*v = verdict{}
		rec := r.rec
		ov := l.overlay[rec.key]
		e := l.entries[rec.key]
		done := e == nil && l.isDone(rec.gtrid)
		committed := ov&ovCommitted != 0 || e != nil && e.decision != nil || done
		switch rec.kind {
		case recCommit:
			// A repeated decision is checked first: once a commit is
			// decided, answering ErrFenced (meaning abort) would be a lie.
			if ov&ovCommitted != 0 {
				v.depend = true // same decision earlier in this batch
				continue
			}
			st := StateNone
			switch {
			case committed:
				st = StateCommitted
			case ov&ovAborted != 0 || e != nil && e.aborted:
				st = StateAborted
			}
			write, err := AdmitCommit(rec.gtrid, now, st)
			if !write {
				if err != nil {
					l.fenced.Add(1)
				}
				reply(r, err) // nil: already durable
				continue
			}
			l.overlay[rec.key] = ov | ovCommitted
		case recAbort:
			if committed {
				err := fmt.Errorf("decisionlog: abort %s: %w", rec.key, ErrAlreadyCommitted)
				if ov&ovCommitted != 0 {
					// If this batch fails the decision is unknown, not
					// durable, so the answer must wait for the batch.
					v.depend, v.okErr = true, err
				} else {
					reply(r, err)
				}
				continue
			}
			l.overlay[rec.key] = ov | ovAborted
		case recEnd:
			// End queues one record per entry. Skip it if a compaction
			// has meanwhile dropped the entry (End already marked it
			// ended, so it was dead): nothing is left to end.
			if !(e != nil && e.decision != nil || done) || ov&ovEnded != 0 {
				continue
			}
			l.overlay[rec.key] = ov | ovEnded
		}
		v.write = true
		l.buf = append(l.buf, r.frame...)
	}
	l.mu.RUnlock()

	// A batch whose records nobody waits for (End records, which need not
	// be durable when End returns) is written without an fsync: the next
	// batch's fsync, or Close, makes it durable. Otherwise every phase 2
	// that ends between two decisions would cost an fsync of its own: most
	// of the log's fsyncs under load.
	waiters := 0
	for i, r := range batch {
		if l.verdicts[i].write && r.done != nil {
			waiters++
		}
	}
	waited := waiters > 0
	if waited {
		l.lastWaiters = waiters
	}
	var err error
	if len(l.buf) > 0 {
		l.buf, err = l.appendSeal(l.buf)
	}
	switch {
	case err != nil:
		err = l.failStop("encode seal of", err)
	case len(l.buf) == 0:
	case waited:
		err = l.writeSync(l.buf)
	default:
		err = l.writeLazy(l.buf)
	}
	if err != nil {
		for i, r := range batch {
			if v := l.verdicts[i]; v.write || v.depend {
				reply(r, err)
			}
		}
		return
	}

	if len(l.buf) > 0 {
		var n int64
		l.mu.Lock()
		for i, r := range batch {
			if l.verdicts[i].write {
				l.apply(r.rec, len(r.frame))
				n++
			}
		}
		l.size += int64(len(l.buf))
		l.batchSeq++
		if waited {
			l.durable, l.durableSeq = l.size, l.batchSeq
		}
		l.mu.Unlock()
		l.appends.Add(n)
		if waited {
			l.batches.Add(1)
			l.batchSizes[batchBucket(n)].Add(1)
			l.batchRecords.Add(n)
		} else {
			l.lazy.Add(1)
		}
	}
	for i, r := range batch {
		if v := l.verdicts[i]; v.write || v.depend {
			reply(r, v.okErr)
		}
	}
	l.maybeCompact()
}

// appendSeal appends the seal of the batch in b: its sequence number and
// the offset up to which an fsync has returned. The seal is what makes the
// batch count on replay, and a later seal's durable offset is what lets an
// open tell a torn, never-acknowledged region from damage to acknowledged
// records.
func (l *FileLog) appendSeal(b []byte) ([]byte, error) {
	return appendSealFrame(b, l.batchSeq+1, l.durable, l.now()), nil
}

// writeSync appends b and fsyncs. Any error is fail-stop: the bytes may or
// may not be on disk, so no later record may be written after them.
func (l *FileLog) writeSync(b []byte) error {
	n, err := l.file.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return l.failStop("write", err)
	}
	if err := l.syncFile(l.file); err != nil {
		return l.failStop("fsync", err)
	}
	l.dirty = false
	return nil
}

// writeLazy appends b without an fsync; the next writeSync (one fsync covers
// every earlier write to the file) or Close makes it durable. A failed write
// is fail-stop like in writeSync.
func (l *FileLog) writeLazy(b []byte) error {
	n, err := l.file.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return l.failStop("write", err)
	}
	l.dirty = true
	return nil
}
