package decisionlog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// Defaults of FileLogOptions.
const (
	DefaultMaxBatch     = 1024
	DefaultCompactBytes = 64 << 20
)

// abortRetention is how long past its deadline an abort record is kept by
// compaction. The fence itself only needs it until the deadline (after that
// the deadline alone refuses the commit); the margin covers a wall clock
// that steps back a little after compaction dropped the record.
const abortRetention = 10 * time.Minute

// FileLogOptions configures OpenFileLog.
type FileLogOptions struct {
	// ReadOnly opens the log without the lock and refuses every write; for
	// tools that inspect the log while a coordinator runs. The log is a
	// snapshot taken at open, and a torn tail (possibly a batch being
	// written right now) is ignored, not cut.
	ReadOnly bool

	// MaxBatch is the most records written with one fsync (default
	// DefaultMaxBatch).
	MaxBatch int

	// CommitDelay, if positive, is how long the writer waits after the
	// first record of a batch that a caller waits for (a commit decision,
	// an abort) before writing the batch, so that more decisions can share
	// its fsync (PostgreSQL's commit_delay). It only waits when the
	// previous batch held more than one such record, a sign that decisions
	// arrive concurrently, so a lone client never pays it. It trades up to
	// that much latency for fewer fsyncs. The default, zero, never waits:
	// batching then comes only from the records queued while the previous
	// fsync ran.
	CommitDelay time.Duration

	// CompactBytes: when the file grows past it and most of it is dead
	// (ended transactions), the log compacts itself (default
	// DefaultCompactBytes; negative disables automatic compaction).
	CompactBytes int64

	// Now is the clock used for the fence and for record times (default
	// time.Now). It must be safe for concurrent use.
	Now func() time.Time

	// hooks lets tests inject faults into file operations.
	hooks *fileLogHooks
}

// logFile is what the writer needs of an open log file. It exists so tests
// can inject write and fsync failures.
type logFile interface {
	io.Writer
	Sync() error
	Close() error
}

// fileLogHooks are test-only fault injection points.
type fileLogHooks struct {
	// wrapFile wraps every file the log appends to (the log itself and a
	// compaction's new file) after it is opened.
	wrapFile func(f logFile) logFile
	// syncDir replaces the directory fsync.
	syncDir func(dir string) error
}

// FileLogStats are counters of a FileLog since it was opened.
type FileLogStats struct {
	Appends        int64 // records written (End records may wait for the next fsync)
	Syncs          int64 // fsyncs issued (log file, compaction file and directory)
	Batches        int64 // group-commit batches written (one write and one fsync each)
	LazyWrites     int64 // writes of records nobody waits for (End), left for the next fsync
	Bytes          int64 // current size of the log file
	Entries        int   // transactions held in memory
	Live           int   // of Entries, how many compaction would keep
	Compactions    int64 // compactions completed
	Fenced         int64 // commit decisions refused with ErrFenced
	TruncatedBytes int64 // torn-tail bytes cut (or, read-only, ignored) at open
	// Failed: a write failed and the log is fail-stopped (it refuses every
	// write until reopened).
	Failed bool
	// BatchSizes is the histogram of records per fsynced batch:
	// BatchSizes[i] counts the batches of more than 1<<(i-1) and at most
	// 1<<i records (not cumulative); the last element counts larger ones.
	BatchSizes [BatchSizeBuckets]int64
	// BatchRecords is the number of records written in fsynced batches
	// (the sum of the batch sizes).
	BatchRecords int64
}

// BatchSizeBuckets is the number of buckets of FileLogStats.BatchSizes:
// bounds 1, 2, 4, ... 1024 (DefaultMaxBatch), and one for larger batches.
const BatchSizeBuckets = 12

// batchBucket returns the FileLogStats.BatchSizes bucket of a batch of n
// records (n >= 1).
func batchBucket(n int64) int {
	return min(bits.Len64(uint64(n-1)), BatchSizeBuckets-1)
}

// FileLog is the embedded decision log: an append-only file in one
// directory, group-committed (many records per fsync), with the fence
// enforced by its single writer. It implements Log. A writable FileLog holds
// an exclusive lock on its directory until Close.
type FileLog struct {
	dir, path    string
	readOnly     bool
	maxBatch     int
	commitDelay  time.Duration
	compactBytes int64
	now          func() time.Time
	wrapFile     func(logFile) logFile
	syncDirFn    func(string) error

	lockFile *os.File

	// Queue between callers and the writer goroutine.
	qmu        sync.Mutex
	qcond      sync.Cond
	queue      []*request
	closed     bool
	failed     error // set once; every later write returns it (fail-stop)
	writerDone chan struct{}
	delayNeed  int           // while the writer waits CommitDelay: queue length that ends the wait
	delayWake  chan struct{} // ends the writer's CommitDelay early

	// In-memory state. Only the writer goroutine (or OpenFileLog before it
	// starts) mutates it, under mu, except that End sets entry.ended under
	// mu; readers take mu.RLock. Lock order: mu before qmu.
	mu      sync.RWMutex
	entries map[string]*entry
	order   []*entry // by first record
	seq     uint64
	size    int64

	appends, syncs, batches, lazy, compactions, fenced, truncated atomic.Int64

	// Records per fsynced batch (FileLogStats.BatchSizes, BatchRecords).
	batchSizes   [BatchSizeBuckets]atomic.Int64
	batchRecords atomic.Int64

	// Writer-goroutine scratch, reused across batches.
	file        logFile
	taken       []*request
	buf         []byte
	overlay     map[string]uint8
	verdicts    []verdict
	nextCompact int64
	dirty       bool // written since the last fsync (lazy End records)
	lastWaiters int  // waited-for records in the last fsynced batch

	closeOnce sync.Once
	closeErr  error
}

var _ Log = (*FileLog)(nil)

// entry is everything known about one gtrid.
type entry struct {
	key       string
	gtrid     drivers.GlobalID
	recs      []seqRecord // in log order
	decision  *Decision
	decSeq    uint64
	aborted   bool
	ended     bool
	heuristic bool
	bytes     int64 // framed bytes of recs in the current file
}

type seqRecord struct {
	seq uint64
	rec *logRecord
}

func (e *entry) state() State {
	switch {
	case e.decision != nil && e.ended:
		return StateDone
	case e.decision != nil:
		return StateCommitted
	case e.aborted:
		return StateAborted
	}
	return StateNone
}

// live reports whether compaction keeps e: a commit decision whose phase 2
// has not ended, an abort still needed by the fence, or anything with a
// heuristic action (kept forever, to be reported).
func (e *entry) live(now time.Time) bool {
	switch {
	case e.heuristic:
		return true
	case e.decision != nil:
		return !e.ended
	case e.aborted:
		return now.Before(e.gtrid.Deadline().Add(abortRetention))
	}
	return false
}

func (e *entry) export() Entry {
	out := Entry{GTRID: e.gtrid, State: e.state()}
	for _, sr := range e.recs {
		switch sr.rec.kind {
		case recCommit:
			if out.Decision == nil {
				d := *sr.rec.decision
				d.Participants = slices.Clone(d.Participants)
				out.Decision = &d
			}
		case recAbort, recAction:
			out.Actions = append(out.Actions, *sr.rec.action)
		}
	}
	return out
}

// request is one record (or a compaction) handed to the writer.
type request struct {
	rec     *logRecord
	frame   []byte
	compact bool
	done    chan error // nil for End, which nobody waits for
}

// verdict is what the writer decided for one request of a batch.
type verdict struct {
	write  bool  // the record is part of this batch's write
	depend bool  // nothing written, but the answer waits for the batch
	okErr  error // answer if the batch succeeds (write or depend)
}

// Bits of the writer's per-batch overlay: what earlier records of the same
// batch (not yet durable, so not yet in entries) did to a gtrid.
const (
	ovCommitted uint8 = 1 << iota
	ovAborted
	ovEnded
)

// OpenFileLog opens (creating it if needed, unless read-only) the decision
// log in dir and replays it. A torn tail left by a crash is cut; damage that
// valid records follow makes it fail, naming the offset. A writable open fails
// with an error wrapping ErrLogLocked while another FileLog, in this process
// or another, has the directory open for writing.
func OpenFileLog(dir string, opts FileLogOptions) (*FileLog, error) {
	if dir == "" {
		return nil, errors.New("decisionlog: decision log directory is empty")
	}
	l := &FileLog{
		dir:          dir,
		path:         filepath.Join(dir, logFileName),
		readOnly:     opts.ReadOnly,
		maxBatch:     opts.MaxBatch,
		commitDelay:  opts.CommitDelay,
		compactBytes: opts.CompactBytes,
		now:          opts.Now,
		wrapFile:     func(f logFile) logFile { return f },
		syncDirFn:    syncDir,
		entries:      make(map[string]*entry),
		overlay:      make(map[string]uint8),
		writerDone:   make(chan struct{}),
		delayWake:    make(chan struct{}, 1),
	}
	l.qcond.L = &l.qmu
	if l.maxBatch <= 0 {
		l.maxBatch = DefaultMaxBatch
	}
	if l.compactBytes == 0 {
		l.compactBytes = DefaultCompactBytes
	}
	if l.now == nil {
		l.now = time.Now
	}
	if h := opts.hooks; h != nil {
		if h.wrapFile != nil {
			l.wrapFile = h.wrapFile
		}
		if h.syncDir != nil {
			l.syncDirFn = h.syncDir
		}
	}
	if l.readOnly {
		if err := l.openReadOnly(); err != nil {
			return nil, err
		}
		l.closed = true // nothing may be queued
		close(l.writerDone)
		return l, nil
	}
	if err := l.openWritable(); err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

func (l *FileLog) openReadOnly() error {
	data, err := os.ReadFile(l.path)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log: %w", err)
	}
	if len(data) < len(logMagic) && strings.HasPrefix(logMagic, string(data)) {
		// Being created by a writer right now: an empty log.
		l.size = int64(len(data))
		return nil
	}
	if err := l.checkHeader(data); err != nil {
		return err
	}
	end, torn, err := scanLog(data, l.apply)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log %s: %w", l.path, err)
	}
	if torn != "" {
		l.truncated.Store(int64(len(data) - end))
	}
	l.size = int64(len(data))
	return nil
}

func (l *FileLog) openWritable() (err error) {
	if err := l.mkdirDurable(); err != nil {
		return fmt.Errorf("decisionlog: create decision log directory: %w", err)
	}
	lock, err := lockDir(l.dir)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	// A compaction that crashed before its rename left only garbage.
	if err := os.Remove(filepath.Join(l.dir, compactFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("decisionlog: remove stale compaction file: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("decisionlog: read decision log %s: %w", l.path, err)
	}
	switch {
	case len(data) < len(logMagic) && strings.HasPrefix(logMagic, string(data)),
		len(data) <= len(logMagic) && !bytes.ContainsFunc(data, func(r rune) bool { return r != 0 }):
		// New, or a crash interrupted its creation (its size reached the
		// disk, its header did not: zeros). No record can have been
		// acknowledged before the header was fsynced.
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
		}
		if _, err := f.Write([]byte(logMagic)); err != nil {
			return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
		}
		if err := l.syncFile(f); err != nil {
			return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
		}
		if err := l.syncDir(); err != nil {
			return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
		}
		l.truncated.Store(int64(len(data)))
		l.size = int64(len(logMagic))
	default:
		if err := l.checkHeader(data); err != nil {
			return err
		}
		end, torn, err := scanLog(data, l.apply)
		if err != nil {
			return fmt.Errorf("decisionlog: open decision log %s: %w", l.path, err)
		}
		if torn != "" {
			// Whatever was being appended when the process died never
			// completed its fsync, so no caller was told it is durable.
			if err := f.Truncate(int64(end)); err != nil {
				return fmt.Errorf("decisionlog: cut torn tail of %s (%s): %w", l.path, torn, err)
			}
			l.truncated.Store(int64(len(data) - end))
		}
		// What was just read may be in the page cache only: a process
		// killed between its write and its fsync leaves records no caller
		// was told are durable. Make them durable before anything acts on
		// them (the coordinator resumes their phase 2), as a power loss
		// could otherwise take back a decision whose branches committed.
		// The directory too: a crash may have come before its first fsync.
		if err := l.syncFile(f); err != nil {
			return fmt.Errorf("decisionlog: make decision log %s durable: %w", l.path, err)
		}
		if err := l.syncDir(); err != nil {
			return fmt.Errorf("decisionlog: make decision log %s durable: %w", l.path, err)
		}
		l.size = int64(end)
	}
	l.file = l.wrapFile(f)
	l.lockFile = lock
	return nil
}

// LogExists reports whether dir holds a decision log (a FileLog was ever
// opened writable there).
func LogExists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, logFileName))
	return err == nil
}

// mkdirDurable creates the log directory and any missing parents, and makes
// each new directory entry durable (fsync of its parent), so that a power
// loss cannot take the directory, and the decisions in it, away.
func (l *FileLog) mkdirDurable() error {
	var missing []string
	for d := filepath.Clean(l.dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := l.syncDirFn(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

func (l *FileLog) checkHeader(data []byte) error {
	if !bytes.HasPrefix(data, []byte(logMagic)) {
		return fmt.Errorf("decisionlog: %s is not a xabridge decision log (header %q, want %q)",
			l.path, data[:min(len(data), len(logMagic))], logMagic)
	}
	return nil
}

func (l *FileLog) syncFile(f interface{ Sync() error }) error {
	l.syncs.Add(1)
	return f.Sync()
}

func (l *FileLog) syncDir() error {
	l.syncs.Add(1)
	return l.syncDirFn(l.dir)
}

// syncDir makes a directory's entries (a created or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// apply adds one durable record to the in-memory state. Callers hold mu (or
// own l exclusively, during open).
func (l *FileLog) apply(rec *logRecord, size int) {
	e := l.entries[rec.key]
	if e == nil {
		e = &entry{key: rec.key, gtrid: rec.gtrid}
		l.entries[rec.key] = e
		l.order = append(l.order, e)
	}
	l.seq++
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
		if e.decision != nil {
			e.ended = true
		}
	}
}

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
	w := wireRecord{Kind: recCommit.String(), GTRID: g.String(), At: l.timeOr(d.At), Participants: d.Participants}
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
// it twice is not.
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
	// queued per entry and the flag is undone if queueing fails.
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[key]
	if e == nil || e.decision == nil {
		return fmt.Errorf("decisionlog: end %s: the log holds no commit decision for it", key)
	}
	if e.ended {
		return nil
	}
	if err := l.enqueue(&request{rec: rec, frame: frame}); err != nil {
		return fmt.Errorf("decisionlog: end %s: %w", key, err)
	}
	e.ended = true
	return nil
}

// Lookup returns what the log knows about one transaction.
func (l *FileLog) Lookup(gtrid drivers.GlobalID) (Entry, bool) {
	key := gtrid.String()
	l.mu.RLock()
	defer l.mu.RUnlock()
	e := l.entries[key]
	if e == nil {
		return Entry{}, false
	}
	return e.export(), true
}

// Pending returns the durable commit decisions whose phase 2 has not ended,
// in log order.
func (l *FileLog) Pending() []Decision {
	l.mu.RLock()
	var pend []*entry
	for _, e := range l.order {
		if e.decision != nil && !e.ended {
			pend = append(pend, e)
		}
	}
	// Entries are in order of their first record; a decision may come after
	// an earlier action on the same gtrid.
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
// one's first record. Ended transactions are included until a compaction
// drops them.
func (l *FileLog) Entries() []Entry {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]Entry, 0, len(l.order))
	for _, e := range l.order {
		out = append(out, e.export())
	}
	return out
}

// Stats returns the log's counters.
func (l *FileLog) Stats() FileLogStats {
	now := l.now()
	l.mu.RLock()
	s := FileLogStats{Bytes: l.size, Entries: len(l.order)}
	for _, e := range l.order {
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

// canonicalGTRID validates g (only the zero GlobalID is invalid) and returns
// it as the log stores it: g itself, canonical by construction.
func canonicalGTRID(g drivers.GlobalID) (drivers.GlobalID, error) {
	if err := g.Validate(); err != nil {
		return drivers.GlobalID{}, err
	}
	return g, nil
}

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
		batch := l.take()
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
			err := l.compact()
			batch[0].done <- err
		} else {
			l.writeBatch(batch)
		}
		clear(batch)
	}
}

// take waits for requests and returns the next batch: up to maxBatch records,
// or one compaction. It returns nil once the log is closed and drained.
func (l *FileLog) take() []*request {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	for len(l.queue) == 0 {
		if l.closed {
			return nil
		}
		l.qcond.Wait()
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
	return l.taken
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

// failStop records the failure that stops the log and returns it.
func (l *FileLog) failStop(what string, err error) error {
	f := fmt.Errorf("%w (refusing writes until reopened): %s %s: %w", ErrLogFailed, what, l.path, err)
	l.qmu.Lock()
	if l.failed == nil {
		l.failed = f
	}
	l.qmu.Unlock()
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
	for i, r := range batch {
		v := &l.verdicts[i]
		*v = verdict{}
		rec := r.rec
		ov := l.overlay[rec.key]
		// Read without mu: the map and the fields used here are only
		// written by this goroutine (End touches only entry.ended).
		e := l.entries[rec.key]
		committed := ov&ovCommitted != 0 || e != nil && e.decision != nil
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
			if e == nil || e.decision == nil || ov&ovEnded != 0 {
				continue
			}
			l.overlay[rec.key] = ov | ovEnded
		}
		v.write = true
		l.buf = append(l.buf, r.frame...)
	}

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
	switch {
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
	l.mu.RLock() // End may set entry.ended concurrently
	for _, e := range l.order {
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
	for _, e := range l.order {
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
	size := int64(len(logMagic))
	w.WriteString(logMagic)
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
	if err := w.Flush(); err != nil {
		return fmt.Errorf("decisionlog: compact %s: write: %w", l.path, err)
	}
	if err := l.syncFile(f); err != nil {
		return fmt.Errorf("decisionlog: compact %s: fsync: %w", l.path, err)
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
	l.entries = make(map[string]*entry, len(keep))
	for _, e := range keep {
		e.bytes = bytesOf[e]
		l.entries[e.key] = e
	}
	l.order = keep
	l.size = size
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
