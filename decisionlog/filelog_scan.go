package decisionlog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"time"
)

// ErrCorruptLog is wrapped by the error OpenFileLog (and RepairLog) returns
// when the log has damage it must not cut: damage to records that were
// acknowledged, or a frame whose checksum matches but which is not a record.
var ErrCorruptLog = errors.New("decision log is corrupt")

var errCorruptLog = ErrCorruptLog

// ErrNoLog: the directory holds no initialised decision log (no file, or an
// empty, zero-filled or headerless one). Only a coordinator's writable open
// starts a log; read-only tools never take such a file for an empty log.
var ErrNoLog = errors.New("no decision log")

// scanResult is what a scan of a log file found.
type scanResult struct {
	version   int    // 1 or 2; 0 when the file holds no log yet
	node      string // the node the log belongs to ("" when unbound)
	size      int64  // bytes scanned
	end       int64  // the kept part ends here (size unless there is a cut)
	records   int    // records kept
	batches   int    // sealed batches kept
	lastSeq   uint64 // sequence number of the last sealed batch kept
	lastSeal  time.Time
	durableTo int64 // the furthest offset a seal (or the fail marker) records as durable
	cut       *CutRegion
}

// CutRegion is a part at the end of a log file that was never acknowledged
// and is (or would be) cut.
type CutRegion struct {
	Offset, Length int64
	// Reason says what is wrong at Offset, or what made the region
	// unacknowledged.
	Reason string
	// Records lists the intact records found in the region ("commit
	// <gtrid> at offset N"): none of them was ever acknowledged.
	Records []string
}

// pendingRec is a record of a batch whose seal has not been read yet.
type pendingRec struct {
	rec  *logRecord
	off  int64
	size int
}

// scanner replays a version-2 log file.
type scanner struct {
	r    io.ReaderAt
	size int64
	mark failMark // a fail-stopped writer's marker: what follows it was never acknowledged
	// markHit: the scan reached the batch boundary the marker names.
	markHit bool
	apply   func(rec *logRecord, size int)
	res     scanResult
	batch   []pendingRec
	start   int64 // offset of the current (unsealed) batch
}

// scanFile replays the log held by r (size bytes, magic included) through
// apply, batch by batch, and reports what it found. mark.durable, if >= 0, is the
// offset a fail-stopped writer recorded as durable: whatever follows it was
// never acknowledged. A damaged or unsealed region no later seal claims as
// durable is reported in res.cut (and not applied); damage to acknowledged
// records is an error wrapping errCorruptLog.
func scanFile(r io.ReaderAt, size int64, mark failMark, apply func(rec *logRecord, size int)) (scanResult, error) {
	head := make([]byte, min(size, int64(len(logMagic))))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return scanResult{}, err
	}
	switch {
	case bytes.Equal(head, []byte(logMagicV1)):
		return scanV1(r, size, apply)
	case !bytes.Equal(head, []byte(logMagic)):
		if isUninitialised(r, size) {
			if mark.durable >= 0 {
				return scanResult{}, fmt.Errorf("%w: the file holds no log, but %s records it durable up to offset %d: acknowledged records are missing", errCorruptLog, failedFileName, mark.durable)
			}
			return scanResult{size: size, end: 0}, nil
		}
		return scanResult{}, fmt.Errorf("not a xabridge decision log (header %q, want %q)", head, logMagic)
	}
	s := &scanner{r: r, size: size, mark: mark, apply: apply, start: int64(len(logMagic))}
	s.res = scanResult{size: size, durableTo: -1}
	err := s.run()
	return s.res, err
}

// isUninitialised reports whether a file without a valid magic is what a
// crash during the log's creation leaves: empty, a prefix of the magic, or
// zeros (its size reached the disk, its bytes did not). Nothing in it was
// ever acknowledged.
func isUninitialised(r io.ReaderAt, size int64) bool {
	if size > 64<<10 {
		return false
	}
	data := make([]byte, size)
	if _, err := r.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	return strings.HasPrefix(logMagic, string(data)) || !bytes.ContainsFunc(data, func(r rune) bool { return r != 0 })
}

func (s *scanner) run() error {
	end := s.size
	if m := s.mark; m.durable > s.size {
		return fmt.Errorf("%w: the log is %d bytes, shorter than offset %d its last writer recorded as durable when it fail-stopped (%s): acknowledged records are missing (was it truncated or replaced? if it was restored from a copy on purpose, remove %s)",
			errCorruptLog, s.size, m.durable, failedFileName, failedFileName)
	}
	br := bufio.NewReaderSize(io.NewSectionReader(s.r, 0, end), 256<<10)
	if _, err := br.Discard(len(logMagic)); err != nil {
		return err
	}
	off := int64(len(logMagic))
	s.res.end = off
	var hdr [frameHeaderLen]byte
	var buf []byte
	for off < end && !s.markHit {
		if s.mark.durable >= 0 && off > s.mark.durable {
			return s.markMismatch()
		}
		rem := end - off
		problem := ""
		var payload []byte
		switch {
		case rem < frameHeaderLen:
			problem = fmt.Sprintf("partial frame header (%d of %d bytes)", rem, frameHeaderLen)
		default:
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return err
			}
			n := int64(binary.LittleEndian.Uint32(hdr[:]))
			switch {
			case n == 0 || n > maxRecordLen:
				problem = fmt.Sprintf("invalid record length %d", n)
			case n > rem-frameHeaderLen:
				problem = fmt.Sprintf("record length %d runs past the end of the file", n)
			default:
				buf = slices.Grow(buf[:0], int(n))[:n]
				if _, err := io.ReadFull(br, buf); err != nil {
					return err
				}
				if crc32.Checksum(buf, castagnoli) != binary.LittleEndian.Uint32(hdr[4:]) {
					problem = "checksum mismatch"
				}
				payload = buf
			}
		}
		if problem != "" {
			return s.damaged(off, problem)
		}
		size := frameHeaderLen + len(payload)
		rec, err := decodePayload(payload)
		if err != nil {
			// The checksum matched, so these bytes were written as they
			// are: a bug or a newer format, not a torn write.
			return fmt.Errorf("%w: record at offset %d: %w", errCorruptLog, off, err)
		}
		if err := s.frame(rec, off, size); err != nil {
			return err
		}
		off += int64(size)
	}
	switch {
	case s.mark.durable >= 0 && !s.markHit:
		return s.markMismatch()
	case s.markHit && s.start < s.size:
		s.cutFrom(s.start, fmt.Sprintf("written after the write or fsync error that fail-stopped the log (it was durable up to offset %d): never acknowledged", s.start))
		s.res.cut.Records = append(s.res.cut.Records, s.laterFrames(s.start, s.size).recs...)
	case len(s.batch) > 0:
		s.cutFrom(s.start, "a batch without its seal (the write was interrupted): never acknowledged")
	}
	return nil
}

// frame takes one decoded, checksummed frame at off.
func (s *scanner) frame(rec *logRecord, off int64, size int) error {
	switch {
	case s.res.version == 0:
		if rec.kind != recHeader || off != int64(len(logMagic)) {
			return fmt.Errorf("%w: the first frame (offset %d) is a %s record, not the header", errCorruptLog, off, rec.kind)
		}
		s.res.version, s.res.node = rec.version, rec.node
		s.start = off + int64(size)
		s.res.end = s.start
		return s.atBoundary()
	case rec.kind == recHeader:
		return fmt.Errorf("%w: a second header at offset %d", errCorruptLog, off)
	case rec.kind == recSeal:
		if rec.seq <= s.res.lastSeq {
			return fmt.Errorf("%w: batch sequence goes back at offset %d (%d after %d)", errCorruptLog, off, rec.seq, s.res.lastSeq)
		}
		for _, p := range s.batch {
			s.apply(p.rec, p.size)
			s.res.records++
		}
		clear(s.batch)
		s.batch = s.batch[:0]
		s.res.batches++
		s.res.lastSeq, s.res.lastSeal = rec.seq, rec.at
		s.res.durableTo = max(s.res.durableTo, rec.durable)
		s.start = off + int64(size)
		s.res.end = s.start
		return s.atBoundary()
	default:
		s.batch = append(s.batch, pendingRec{rec: rec, off: off, size: size})
	}
	return nil
}

// damaged handles damage at off, inside the batch that starts at s.start:
// it reads the rest of the file for later valid frames. If a later seal
// records the log as durable past the start of this batch, an fsync that
// covered the damaged bytes had returned: they held acknowledged records,
// and cutting them could lose a decision whose branches committed. Else
// the damage lies where no fsync was ever confirmed — a crash during one —
// and everything from the batch on was never acknowledged.
func (s *scanner) damaged(off int64, problem string) error {
	if s.res.version == 0 {
		if off == int64(len(logMagic)) && s.mark.durable < 0 {
			// A torn header: the crash came during the log's creation,
			// before anything could be acknowledged.
			if later := s.laterFrames(off+1, s.size); len(later.recs) == 0 && later.durable <= 0 {
				s.res.end = 0
				return nil
			}
		}
		return fmt.Errorf("%w: %s at offset %d: the header is damaged", errCorruptLog, problem, off)
	}
	later := s.laterFrames(off+1, s.size)
	if s.mark.durable > later.durable {
		// The fail marker proves an fsync up to its offset returned.
		later.durable, later.sealSeq, later.sealOff = s.mark.durable, s.mark.seq, -1
	}
	if later.durable > s.start {
		var affected []string
		for _, p := range s.batch {
			affected = append(affected, describe(p.rec, p.off))
		}
		proof := fmt.Sprintf("the seal of batch %d at offset %d", later.sealSeq, later.sealOff)
		if later.sealOff < 0 {
			proof = "the fail marker " + failedFileName
		}
		return fmt.Errorf("%w: %s at offset %d, in the batch that starts at offset %d; %s records the log durable up to offset %d, so these bytes were acknowledged: refusing to cut them (intact records of this batch before the damage: %s; the damaged bytes may hold more; %d intact records follow the damage)",
			errCorruptLog, problem, off, s.start, proof, later.durable, listOrNone(affected), len(later.recs))
	}
	s.cutFrom(s.start, fmt.Sprintf("%s at offset %d, after the last offset any seal records as durable (%d): never acknowledged", problem, off, max(s.res.durableTo, 0)))
	s.res.cut.Records = append(s.res.cut.Records, later.recs...)
	return nil
}

func listOrNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}

// markMismatch is the error for a fail marker that does not describe this
// log: no batch boundary with its sequence number at its offset. It is
// left over from another file (a log restored from a copy), and cutting at
// its offset could cut acknowledged records of this one.
func (s *scanner) markMismatch() error {
	m := s.mark
	return fmt.Errorf("%w: %s names batch %d ending at offset %d, but the log has no such batch boundary (its batch %d ends at offset %d): the marker is not this log's (if the log was restored from a copy, remove %s)",
		errCorruptLog, failedFileName, m.seq, m.durable, s.res.lastSeq, s.start, failedFileName)
}

// atBoundary notes a batch boundary (after the header or a seal) and
// checks it against the fail marker.
func (s *scanner) atBoundary() error {
	if s.mark.durable < 0 || s.start != s.mark.durable {
		return nil
	}
	if s.res.lastSeq != s.mark.seq {
		return s.markMismatch()
	}
	s.markHit = true
	return nil
}

// cutFrom reports everything from from on as cut; the pending batch's intact
// records are listed.
func (s *scanner) cutFrom(from int64, reason string) {
	c := &CutRegion{Offset: from, Length: s.size - from, Reason: reason}
	for _, p := range s.batch {
		c.Records = append(c.Records, describe(p.rec, p.off))
	}
	s.batch = s.batch[:0]
	s.res.cut = c
	s.res.end = from
}

func describe(rec *logRecord, off int64) string {
	switch rec.kind {
	case recSeal:
		return fmt.Sprintf("seal of batch %d at offset %d", rec.seq, off)
	case recHeader:
		return fmt.Sprintf("header at offset %d", off)
	}
	return fmt.Sprintf("%s %s at offset %d", rec.kind, rec.key, off)
}

// laterInfo is what valid frames after a damage say.
type laterInfo struct {
	recs             []string // intact records (not seals)
	durable          int64    // the largest durable offset a seal records
	sealSeq          uint64
	sealOff          int64
	undecodableFrame bool
}

// laterFrames scans [off, end) for valid frames, resynchronising at every
// byte after damage.
func (s *scanner) laterFrames(off, end int64) laterInfo {
	info := laterInfo{durable: -1}
	if end <= off {
		return info
	}
	data := make([]byte, end-off)
	if _, err := s.r.ReadAt(data, off); err != nil && !errors.Is(err, io.EOF) {
		return info
	}
	for p := 0; p+frameHeaderLen < len(data); {
		payload, next, problem := frameAt(data, p)
		if problem != "" {
			p++
			continue
		}
		rec, err := decodePayload(payload)
		switch {
		case err != nil:
			info.undecodableFrame = true
		case rec.kind == recSeal:
			if rec.durable > info.durable {
				info.durable, info.sealSeq, info.sealOff = rec.durable, rec.seq, off+int64(p)
			}
		default:
			info.recs = append(info.recs, describe(rec, off+int64(p)))
		}
		p = next
	}
	return info
}

// scanV1 replays a version-1 log (no header, no seals): damage with no valid
// frame after it is a torn tail and is cut; damage a valid frame follows is
// refused, as version 1 always did.
func scanV1(r io.ReaderAt, size int64, apply func(rec *logRecord, size int)) (scanResult, error) {
	data := make([]byte, size)
	if _, err := r.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return scanResult{}, err
	}
	res := scanResult{version: 1, size: size, durableTo: -1}
	off := len(logMagicV1)
	for off < len(data) {
		payload, next, problem := frameAt(data, off)
		if problem != "" {
			if valid := nextValidFrame(data, off+1); valid >= 0 {
				return res, fmt.Errorf("%w: %s at offset %d, but a valid record follows at offset %d; refusing to cut it (a durable decision may be in the damaged bytes)",
					errCorruptLog, problem, off, valid)
			}
			res.end = int64(off)
			res.cut = &CutRegion{Offset: int64(off), Length: size - int64(off), Reason: fmt.Sprintf("%s at offset %d (a torn tail of a version-1 log)", problem, off)}
			return res, nil
		}
		rec, err := decodePayload(payload)
		if err == nil && rec.kind.meta() {
			err = fmt.Errorf("a %s frame in a version-1 log", rec.kind)
		}
		if err != nil {
			return res, fmt.Errorf("%w: record at offset %d: %w", errCorruptLog, off, err)
		}
		apply(rec, next-off)
		res.records++
		off = next
	}
	res.end = int64(off)
	return res, nil
}

// nextValidFrame returns the offset of the first frame at or after from whose
// length and checksum are valid, or -1.
func nextValidFrame(data []byte, from int) int {
	for p := from; p+frameHeaderLen < len(data); p++ {
		if _, _, problem := frameAt(data, p); problem == "" {
			return p
		}
	}
	return -1
}
