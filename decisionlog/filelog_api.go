package decisionlog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// Dir returns the directory the log lives in.
func (l *FileLog) Dir() string { return l.dir }

// Commit makes the commit decision durable: it returns nil only once the
// record is written and fsynced. It returns an error wrapping ErrFenced, with
// nothing written, if the log's clock has reached d.GTRID's deadline or an
// abort is recorded for it when the writer reaches the record; and one
// wrapping ErrLogFailed if the write failed and the outcome is unknown. A
// zero d.At is set to the current time. Committing a transaction that
// already has a durable decision returns nil and writes nothing.
func (l *FileLog) Commit(ctx context.Context, d Decision) error {
	if err := l.checkWritable("commit"); err != nil {
		return err
	}
	g, err := canonicalGTRID(d.GTRID)
	if err != nil {
		return fmt.Errorf("decisionlog: commit decision: %w", err)
	}
	if len(d.Participants) > drivers.MaxBranches {
		return fmt.Errorf("decisionlog: commit decision for %s names %d participants, more than %d", g, len(d.Participants), drivers.MaxBranches)
	}
	if err := drivers.ValidateLabel(d.Label); err != nil {
		return fmt.Errorf("decisionlog: commit decision for %s: %w", g, err)
	}
	w := commitWire(g.String(), l.timeOr(d.At), d.Participants, d.Label)
	return l.submit(ctx, &w, "commit")
}

// Abort durably records an abort for a.GTRID; from then on Commit for it
// returns ErrFenced. It returns an error wrapping ErrAlreadyCommitted, with
// nothing written, if a commit decision for it is durable (or precedes the
// abort in the same batch). An empty a.Op is recorded as "abort"; a zero a.At
// as the current time.
func (l *FileLog) Abort(ctx context.Context, a Action) error {
	if err := l.checkWritable("abort"); err != nil {
		return err
	}
	if a.Op == "" {
		a.Op = "abort"
	}
	w, err := l.actionWire(recAbort, a)
	if err != nil {
		return err
	}
	return l.submit(ctx, w, "abort")
}

// Record durably appends an action to a.GTRID's entry. A zero a.At is
// recorded as the current time.
func (l *FileLog) Record(ctx context.Context, a Action) error {
	if err := l.checkWritable("record"); err != nil {
		return err
	}
	w, err := l.actionWire(recAction, a)
	if err != nil {
		return err
	}
	return l.submit(ctx, w, "record")
}

// End records that phase 2 of a committed transaction finished. Lookup and
// Pending reflect it at once, but End returns as soon as the record is
// queued: it reaches disk with the next batch or at Close. If it never does
// (a crash or a log failure first), the transaction is pending again after a
// restart and recovery commits its branches again, which is harmless.
// Ending a transaction with no durable commit decision is an error; ending
// it twice is not. From then on the log keeps only that the transaction is
// done (see doneSet), unless it has a heuristic action.
func (l *FileLog) End(gtrid drivers.GlobalID) error {
	if err := l.checkWritable("end"); err != nil {
		return err
	}
	g, err := canonicalGTRID(gtrid)
	if err != nil {
		return fmt.Errorf("decisionlog: end: %w", err)
	}
	key := g.String()
	w := wireRecord{Kind: recEnd.String(), GTRID: key, At: l.timeOr(time.Time{})}
	rec, frame, err := prepareRecord(&w)
	if err != nil {
		return fmt.Errorf("decisionlog: end: %w", err)
	}
	// mu is held across the enqueue so that exactly one end record is
	// queued per entry and nothing changes if queueing fails.
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[key]
	if e == nil && l.isDone(g) || e != nil && e.ended {
		return nil
	}
	if e == nil || e.decision == nil {
		return fmt.Errorf("decisionlog: end %s: the log holds no commit decision for it", key)
	}
	if err := l.enqueue(&request{rec: rec, frame: frame}); err != nil {
		return fmt.Errorf("decisionlog: end %s: %w", key, err)
	}
	l.markEnded(e)
	return nil
}

// markEnded ends e and, unless it must be kept whole (a heuristic action),
// moves it to the compact done set. Callers hold mu.
func (l *FileLog) markEnded(e *entry) {
	e.ended = true
	if e.heuristic {
		return
	}
	delete(l.entries, e.key)
	l.done.add(e.gtrid, e.first)
}

// apply adds one durable record to the in-memory state. Callers hold mu (or
// own l exclusively, during open).
func (l *FileLog) apply(rec *logRecord, size int) {
	l.seq++
	e := l.entries[rec.key]
	if e == nil {
		first, done := l.doneLookup(rec.gtrid)
		switch {
		case done && rec.kind == recEnd, done && rec.kind == recCommit:
			return // already done: the End queued by End, or a replayed duplicate
		case done:
			e = l.revive(rec, uint64(first))
		case rec.kind == recEnd:
			return // its entry was compacted away: nothing left to end
		default:
			e = &entry{key: rec.key, gtrid: rec.gtrid, first: l.seq}
			l.entries[rec.key] = e
		}
	}
	e.recs = append(e.recs, seqRecord{seq: l.seq, rec: rec})
	e.bytes += int64(size)
	switch rec.kind {
	case recCommit:
		if e.decision == nil {
			e.decision, e.decSeq = rec.decision, l.seq
		}
	case recAbort:
		e.aborted = true
		e.heuristic = e.heuristic || rec.action.Heuristic
	case recAction:
		e.heuristic = e.heuristic || rec.action.Heuristic
	case recEnd:
		if e.decision != nil && !e.ended {
			l.markEnded(e)
		}
	}
}

// revive turns a done transaction that gets another record (an operator's
// action after its end) back into a whole entry. Its records are gone; a
// commit and an end record stand for them, so that a compaction writes an
// entry that replays as done.
func (l *FileLog) revive(rec *logRecord, first uint64) *entry {
	d := &Decision{GTRID: rec.gtrid}
	e := &entry{key: rec.key, gtrid: rec.gtrid, first: first, decision: d, decSeq: first, ended: true, revived: true}
	e.recs = []seqRecord{
		{seq: first, rec: &logRecord{kind: recCommit, key: rec.key, gtrid: rec.gtrid, decision: d}},
		{seq: l.seq, rec: &logRecord{kind: recEnd, key: rec.key, gtrid: rec.gtrid, at: rec.at}},
	}
	l.entries[rec.key] = e
	return e
}

// doneLookup finds g in the done set (and, while a compaction runs, in
// the one of its snapshot). Callers hold mu.
func (l *FileLog) doneLookup(g drivers.GlobalID) (uint32, bool) {
	if first, ok := l.done.lookup(g); ok {
		return first, true
	}
	return l.oldDone.lookup(g)
}

func (l *FileLog) isDone(g drivers.GlobalID) bool {
	_, ok := l.doneLookup(g)
	return ok
}

func (l *FileLog) doneLen() int { return l.done.len() + l.oldDone.len() }

// Lookup returns what the log knows about one transaction.
func (l *FileLog) Lookup(gtrid drivers.GlobalID) (Entry, bool) {
	key := gtrid.String()
	l.mu.RLock()
	defer l.mu.RUnlock()
	if e := l.entries[key]; e != nil {
		return e.export(), true
	}
	if l.isDone(gtrid) {
		return doneEntry(gtrid), true
	}
	return Entry{}, false
}

// Pending returns the durable commit decisions whose phase 2 has not ended,
// in log order.
func (l *FileLog) Pending() []Decision {
	l.mu.RLock()
	var pend []*entry
	for _, e := range l.entries {
		if e.decision != nil && !e.ended {
			pend = append(pend, e)
		}
	}
	slices.SortFunc(pend, func(a, b *entry) int { return compareSeq(a.decSeq, b.decSeq) })
	out := make([]Decision, 0, len(pend))
	for _, e := range pend {
		d := *e.decision
		d.Participants = slices.Clone(d.Participants)
		out = append(out, d)
	}
	l.mu.RUnlock()
	return out
}

// Entries returns every transaction the log holds, in the order of each
// one's first record. Ended transactions are included (in their compact
// form: state done, the decision without participants) until a compaction
// drops them.
func (l *FileLog) Entries() []Entry {
	type ordered struct {
		first uint64
		e     Entry
	}
	l.mu.RLock()
	all := make([]ordered, 0, len(l.entries)+l.doneLen())
	for _, e := range l.entries {
		all = append(all, ordered{e.first, e.export()})
	}
	each := func(g drivers.GlobalID, first uint32) {
		if l.entries[g.String()] == nil { // not revived
			all = append(all, ordered{uint64(first), doneEntry(g)})
		}
	}
	l.done.each(each)
	l.oldDone.each(each)
	l.mu.RUnlock()
	slices.SortStableFunc(all, func(a, b ordered) int { return compareSeq(a.first, b.first) })
	out := make([]Entry, len(all))
	for i, o := range all {
		out[i] = o.e
	}
	return out
}

// Node returns the node the log belongs to ("" while it is unbound).
func (l *FileLog) Node() string { return l.node }

// Stats returns the log's counters.
func (l *FileLog) Stats() FileLogStats {
	now := l.now()
	l.mu.RLock()
	s := FileLogStats{Bytes: l.size, Entries: len(l.entries) + l.doneLen(), Done: l.doneLen(), LastBatch: l.batchSeq}
	for _, e := range l.entries {
		if e.live(now) {
			s.Live++
		}
	}
	l.mu.RUnlock()
	s.Appends = l.appends.Load()
	s.Syncs = l.syncs.Load()
	s.Batches = l.batches.Load()
	s.LazyWrites = l.lazy.Load()
	s.Compactions = l.compactions.Load()
	s.Fenced = l.fenced.Load()
	s.TruncatedBytes = l.truncated.Load()
	s.Failed = l.failure() != nil
	for i := range s.BatchSizes {
		s.BatchSizes[i] = l.batchSizes[i].Load()
	}
	s.BatchRecords = l.batchRecords.Load()
	return s
}

// Compact rewrites the log file with only the live state: commit decisions
// whose phase 2 has not ended, abort records still needed by the fence, and
// every transaction with a heuristic action. Ended transactions are dropped
// from memory too. The new file replaces the old one atomically; writes wait
// while it runs.
func (l *FileLog) Compact(ctx context.Context) error {
	if err := l.checkWritable("compact"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("decisionlog: compact: %w", err)
	}
	r := &request{compact: true, done: make(chan error, 1)}
	if err := l.enqueue(r); err != nil {
		return fmt.Errorf("decisionlog: compact: %w", err)
	}
	return <-r.done
}

// Close writes what is queued (End records), stops the writer and releases
// the lock. Later writes return ErrLogClosed; reads keep working on the
// in-memory state. Close returns the log's failure, if it failed. Calling it
// again returns the same result.
func (l *FileLog) Close() error {
	l.closeOnce.Do(func() {
		l.qmu.Lock()
		l.closed = true
		l.qcond.Broadcast()
		if l.delayNeed > 0 {
			l.wakeDelay()
		}
		l.qmu.Unlock()
		if l.readOnly {
			return
		}
		<-l.writerDone
		var errs []error
		if err := l.file.Close(); err != nil {
			errs = append(errs, fmt.Errorf("decisionlog: close decision log: %w", err))
		}
		if err := l.lockFile.Close(); err != nil {
			errs = append(errs, fmt.Errorf("decisionlog: release decision log lock: %w", err))
		}
		l.qmu.Lock()
		if l.failed != nil {
			errs = append(errs, l.failed)
		}
		l.qmu.Unlock()
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

func (l *FileLog) checkWritable(op string) error {
	if l.readOnly {
		return fmt.Errorf("decisionlog: %s: %s: %w", op, l.dir, ErrLogReadOnly)
	}
	return nil
}

// timeOr returns t, or the log's clock if t is zero, in UTC.
func (l *FileLog) timeOr(t time.Time) time.Time {
	if t.IsZero() {
		t = l.now()
	}
	return t.UTC()
}

func (l *FileLog) actionWire(kind recKind, a Action) (*wireRecord, error) {
	g, err := canonicalGTRID(a.GTRID)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: %s: %w", kind, err)
	}
	return &wireRecord{
		Kind:      kind.String(),
		GTRID:     g.String(),
		At:        l.timeOr(a.At),
		Resource:  a.Resource,
		Branch:    a.Branch,
		Op:        a.Op,
		Reason:    a.Reason,
		Actor:     a.Actor,
		Heuristic: a.Heuristic,
	}, nil
}

// canonicalGTRID validates g and returns it as the log stores it: parsed
// back from its text form, so that times are truncated to milliseconds in
// UTC exactly as they are in an XID read from a database. In particular the
// fence uses the millisecond deadline every branch carries.
func canonicalGTRID(g drivers.GlobalID) (drivers.GlobalID, error) {
	if err := g.Validate(); err != nil {
		return drivers.GlobalID{}, err
	}
	return drivers.ParseGlobalID(g.String())
}
