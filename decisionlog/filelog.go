package decisionlog

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
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
	// Node is the coordinator node id the log belongs to. A new log records
	// it in its header (as does the conversion of a version-1 log); opening
	// a log that belongs to another node fails with an error wrapping
	// ErrWrongNode. A log created without a node accepts any. Empty accepts
	// any log (for tools that only inspect or repair it).
	Node string

	// NoCreate makes a writable open fail with ErrNoLog, changing nothing,
	// when there is no initialised log (no file, or an empty, zero-filled
	// or headerless one) instead of starting one: for operator tools that
	// act on an existing log (recover, resolve, compact), where a new,
	// empty log would presume every committed transaction aborted.
	// Read-only opens always behave so.
	NoCreate bool

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
	Appends        int64  // records written (End records may wait for the next fsync)
	Syncs          int64  // fsyncs issued (log file, compaction file and directory)
	Batches        int64  // group-commit batches written (one write and one fsync each)
	LazyWrites     int64  // writes of records nobody waits for (End), left for the next fsync
	Bytes          int64  // current size of the log file
	Entries        int    // transactions the log knows
	Live           int    // of Entries, how many compaction would keep
	Done           int    // of Entries, how many ended transactions are kept in compact form
	Compactions    int64  // compactions completed
	LastBatch      uint64 // sequence number of the last sealed batch (it only grows)
	Fenced         int64  // commit decisions refused with ErrFenced
	TruncatedBytes int64  // never-acknowledged bytes cut (or, read-only, ignored) at open
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
	noCreate     bool
	node         string // the node the log belongs to ("" while unbound)
	wantNode     string // FileLogOptions.Node
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
	// compactReady: the compaction in flight finished writing its file.
	compactReady bool

	// In-memory state. Only the writer goroutine (or OpenFileLog before it
	// starts) mutates it, under mu, except that End moves an entry to done
	// under mu; readers take mu.RLock. Lock order: mu before qmu.
	mu       sync.RWMutex
	entries  map[string]*entry
	done     doneSet // ended transactions, in compact form
	oldDone  doneSet // while a compaction runs: the done set of its snapshot
	seq      uint64  // records applied (orders entries by first record)
	size     int64
	batchSeq uint64 // sequence number of the last batch written
	durable  int64  // offset up to which an fsync returned
	// durableSeq is the sequence number of the batch that ends at durable.
	durableSeq uint64

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
	compacting  *compaction // in flight, or nil
	compactWait []*request  // Compact calls for the compaction after it
	dirty       bool        // written since the last fsync (lazy End records)
	lastWaiters int         // waited-for records in the last fsynced batch

	closeOnce sync.Once
	closeErr  error
}

var _ Log = (*FileLog)(nil)

// entry is everything known about one gtrid that is not done (see doneSet).
type entry struct {
	key       string
	gtrid     drivers.GlobalID
	first     uint64      // sequence number of its first record
	recs      []seqRecord // in log order
	decision  *Decision
	decSeq    uint64
	aborted   bool
	ended     bool
	heuristic bool
	revived   bool  // brought back from the done set: recs[:2] stand for its commit and end
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
	if e.decision != nil {
		d := *e.decision
		d.Participants = slices.Clone(d.Participants)
		out.Decision = &d
	}
	for _, sr := range e.recs {
		if sr.rec.kind == recAbort || sr.rec.kind == recAction {
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
// log in dir and replays it, checking every frame's checksum. A region at
// the end that was never acknowledged (a batch torn by a crash, or written
// after the fsync error that fail-stopped the last writer) is cut, and kept
// in a file beside the log if it holds intact records; damage to
// acknowledged records makes it fail, naming the offset and the records. A
// writable open fails with an error wrapping ErrLogLocked while another
// FileLog, in this process or another, has the directory open for writing;
// any open fails with ErrWrongNode when the log belongs to a node other than
// opts.Node, and a read-only one with ErrNoLog when there is no initialised
// log.
func OpenFileLog(dir string, opts FileLogOptions) (*FileLog, error) {
	if dir == "" {
		return nil, errors.New("decisionlog: decision log directory is empty")
	}
	l := &FileLog{
		dir:          dir,
		path:         filepath.Join(dir, logFileName),
		readOnly:     opts.ReadOnly,
		noCreate:     opts.NoCreate,
		wantNode:     opts.Node,
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
	f, err := os.Open(l.path)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log: %w", err)
	}
	mark, err := readFailMarker(l.dir)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log %s: %w", l.path, err)
	}
	res, err := scanFile(f, fi.Size(), mark, l.apply)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log %s: %w", l.path, err)
	}
	if res.version == 0 {
		return fmt.Errorf("decisionlog: %s: %w (the file is empty, zero-filled or has no header; only a coordinator starts a log)", l.path, ErrNoLog)
	}
	if err := l.adopt(res); err != nil {
		return err
	}
	l.truncated.Store(res.size - res.end)
	l.size = res.size
	return nil
}

// adopt checks the node of a scanned log and takes over its sequence.
func (l *FileLog) adopt(res scanResult) error {
	if l.wantNode != "" && res.node != "" && res.node != l.wantNode {
		return fmt.Errorf("decisionlog: %s belongs to node %q, not %q: %w", l.path, res.node, l.wantNode, ErrWrongNode)
	}
	l.node = res.node
	l.batchSeq = res.lastSeq
	l.done.flush()
	return nil
}

func (l *FileLog) openWritable() (err error) {
	flags := os.O_RDWR | os.O_CREATE | os.O_APPEND
	if l.noCreate {
		flags &^= os.O_CREATE
		if _, err := os.Stat(l.path); err != nil {
			return fmt.Errorf("decisionlog: %s: %w (%w)", l.path, ErrNoLog, err)
		}
	}
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
	f, err := os.OpenFile(l.path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log: %w", err)
	}
	defer func() {
		if err != nil && f != nil {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log: %w", err)
	}
	// After an fsync error the kernel may keep pages it failed to write,
	// marked clean: reading them back would trust bytes the disk does not
	// hold. Drop the file's cached pages so the scan reads the disk.
	dropCache(f)
	mark, err := readFailMarker(l.dir)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log %s: %w", l.path, err)
	}
	res, err := scanFile(f, fi.Size(), mark, l.apply)
	if err != nil {
		return fmt.Errorf("decisionlog: open decision log %s: %w", l.path, err)
	}
	if err := l.adopt(res); err != nil {
		return err
	}
	l.lockFile = lock
	switch res.version {
	case 0:
		if l.noCreate {
			return fmt.Errorf("decisionlog: %s: %w (the file is empty, zero-filled or has no header; only a coordinator starts a log)", l.path, ErrNoLog)
		}
		// New, or a crash interrupted its creation: nothing in it can have
		// been acknowledged before its header was fsynced.
		l.node = l.wantNode
		if err := l.initFile(f); err != nil {
			return err
		}
		l.truncated.Store(res.size)
	default:
		if res.cut != nil {
			if err := l.cutTail(f, res); err != nil {
				return err
			}
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
		l.size = res.end
	}
	if err := clearFailMarker(l.dir); err != nil {
		return fmt.Errorf("decisionlog: %w", err)
	}
	l.durable, l.durableSeq = l.size, l.batchSeq
	l.file = l.wrapFile(f)
	f = nil // l.file owns it now
	if res.version == 1 {
		// Convert a version-1 log (keeping it as a backup): the new file's
		// header names the node.
		if err := l.upgrade(); err != nil {
			l.file.Close()
			return err
		}
	}
	return nil
}

// initFile starts a new log in f: the magic and the header, fsynced.
func (l *FileLog) initFile(f *os.File) error {
	hdr, err := l.headerFrame()
	if err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
	}
	if _, err := f.Write(append([]byte(logMagic), hdr...)); err != nil {
		return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
	}
	if err := l.syncFile(f); err != nil {
		return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
	}
	if err := l.syncDir(); err != nil {
		return fmt.Errorf("decisionlog: initialise decision log %s: %w", l.path, err)
	}
	l.size = int64(len(logMagic) + len(hdr))
	return nil
}

func (l *FileLog) headerFrame() ([]byte, error) {
	return encodeFrame(&wireRecord{Kind: recHeader.String(), At: l.now().UTC(), Version: formatVersion, Node: l.node})
}

// cutTail keeps a copy of the never-acknowledged region res.cut (when it
// holds intact records) and cuts it off f.
func (l *FileLog) cutTail(f *os.File, res scanResult) error {
	if _, err := saveCut(l.dir, f, res.cut); err != nil {
		return fmt.Errorf("decisionlog: keep a copy of the cut region of %s: %w", l.path, err)
	}
	if err := f.Truncate(res.end); err != nil {
		return fmt.Errorf("decisionlog: cut %s at offset %d (%s): %w", l.path, res.end, res.cut.Reason, err)
	}
	l.truncated.Store(res.size - res.end)
	return nil
}

// saveCut copies region c of f to a new file beside the log when it holds
// intact records, and returns its path ("" when nothing was worth keeping).
func saveCut(dir string, f *os.File, c *CutRegion) (string, error) {
	if len(c.Records) == 0 {
		return "", nil
	}
	data := make([]byte, c.Length)
	if _, err := f.ReadAt(data, c.Offset); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("%s.cut-%d-%d", logFileName, c.Offset, time.Now().UnixNano()))
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = out.Write(data)
	if serr := out.Sync(); err == nil {
		err = serr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return path, err
}

// LogExists reports whether dir holds a decision log file (it may still be
// uninitialised: read-only opens refuse that with ErrNoLog).
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
