package decisionlog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"strconv"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// On-disk format of the file decision log (version 2).
//
// The file starts with the 8-byte magic logMagic. Then come frames, each
//
//	u32 little-endian  payload length (1 .. maxRecordLen)
//	u32 little-endian  CRC-32C (Castagnoli) of the payload
//	payload            one JSON object (wireRecord) followed by '\n'
//
// JSON escapes every byte below 0x20, so a payload never contains a zero
// byte, while every valid frame header does (maxRecordLen < 1<<24 keeps the
// top length byte zero). A frame header can therefore never be mistaken for
// payload text, which makes the "is there a valid frame after this damage?"
// scan reliable.
//
// The first frame is the header (kind "hdr": format version, the node id
// the log belongs to, creation time). The records follow in group-commit
// batches: every write of the writer is one batch, its records followed by
// a seal frame (kind "seal") carrying the batch's sequence number (it only
// grows, across compactions too) and "durable": the file offset up to
// which an fsync had returned when the batch was written. A batch without
// its seal never happened: no caller was told about it. And since a later
// seal records how far the file was durable, open can tell damage in a
// region no fsync ever confirmed (a crash during the fsync: cut it) from
// damage to records a caller was told are durable (refuse, naming them).
//
// Version 1 (magic "XABLOG1\n") had no header and no seals; it still opens
// (damage followed by a valid frame is refused, as it always was), and a
// writable open converts it once, keeping the old file as a backup.
const (
	logFileName     = "xabridge.log"
	lockFileName    = "lock"
	compactFileName = "xabridge.log.compact"
	// failedFileName marks a log whose writer fail-stopped: it holds the
	// offset up to which the log was durable (see markFailed).
	failedFileName = "xabridge.log.failed"
	// v1BackupName is the copy of a version-1 log kept by its conversion.
	v1BackupName = "xabridge.log.v1"

	logMagic       = "XABLOG2\n"
	logMagicV1     = "XABLOG1\n"
	formatVersion  = 2
	frameHeaderLen = 8
	maxRecordLen   = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recKind is the kind of one log record.
type recKind uint8

const (
	recCommit recKind = iota + 1 // a commit decision
	recAbort                     // an abort (fence) record, carrying an Action
	recAction                    // any other Action (recovery or operator)
	recEnd                       // phase 2 finished on every participant
	recHeader                    // the file header: version, node
	recSeal                      // the end of a batch: sequence, durable offset
)

var recKindNames = [...]string{
	recCommit: "commit",
	recAbort:  "abort",
	recAction: "action",
	recEnd:    "end",
	recHeader: "hdr",
	recSeal:   "seal",
}

func (k recKind) String() string {
	if int(k) < len(recKindNames) && recKindNames[k] != "" {
		return recKindNames[k]
	}
	return fmt.Sprintf("recKind(%d)", int(k))
}

func parseRecKind(s string) (recKind, bool) {
	for k, name := range recKindNames {
		if name != "" && name == s {
			return recKind(k), true
		}
	}
	return 0, false
}

// labelledCommitKind is the wire kind of a commit decision with a label.
// A labelled decision is not a "commit" record with one more field: a
// reader from before labels would ignore the field, finish the branches
// under XIDs without the label, miss them and take them for done. It
// refuses a record kind it does not know ("written by a newer xabridge?"),
// which fails closed.
const labelledCommitKind = "lcommit"

// commitWire is the payload of a commit decision.
func commitWire(gtrid string, at time.Time, ps []Participant, label string) wireRecord {
	w := wireRecord{Kind: recCommit.String(), GTRID: gtrid, At: at, Participants: ps}
	if label != "" {
		w.Kind, w.Label = labelledCommitKind, label
	}
	return w
}

// meta reports whether k is a header or seal frame, not a transaction's
// record.
func (k recKind) meta() bool { return k == recHeader || k == recSeal }

// wireRecord is the JSON payload of every record kind. Fields a kind does not
// use are omitted. The gtrid is kept as its canonical string so a dump of the
// raw file reads like the ids operators see in the databases.
type wireRecord struct {
	Kind         string        `json:"k"`
	GTRID        string        `json:"g,omitempty"`
	At           time.Time     `json:"t"`
	Participants []Participant `json:"p,omitempty"`
	Resource     string        `json:"r,omitempty"`
	Branch       uint8         `json:"b,omitempty"`
	Op           string        `json:"op,omitempty"`
	Reason       string        `json:"why,omitempty"`
	Actor        string        `json:"by,omitempty"`
	Heuristic    bool          `json:"h,omitempty"`
	Label        string        `json:"l,omitempty"` // kind "lcommit" only
	// Header.
	Version int    `json:"v,omitempty"`
	Node    string `json:"node,omitempty"`
	// Seal.
	Seq     uint64 `json:"n,omitempty"`
	Durable int64  `json:"d,omitempty"`
}

// logRecord is one decoded record, as held in memory.
type logRecord struct {
	kind     recKind
	key      string // gtrid.String()
	gtrid    drivers.GlobalID
	decision *Decision // recCommit
	action   *Action   // recAbort, recAction
	at       time.Time // every kind
	// recHeader: version, node; recSeal: seq, durable.
	version int
	node    string
	seq     uint64
	durable int64
}

// wire converts r back to its payload form.
func (r *logRecord) wire() wireRecord {
	w := wireRecord{Kind: r.kind.String(), GTRID: r.key, At: r.at}
	switch r.kind {
	case recHeader:
		w.Version, w.Node = r.version, r.node
	case recSeal:
		w.Seq, w.Durable = r.seq, r.durable
	case recCommit:
		w = commitWire(r.key, r.at, r.decision.Participants, r.decision.Label)
	case recAbort, recAction:
		a := r.action
		w.Resource, w.Branch, w.Op, w.Reason, w.Actor, w.Heuristic = a.Resource, a.Branch, a.Op, a.Reason, a.Actor, a.Heuristic
	}
	return w
}

// encodeFrame returns the framed record for w.
func encodeFrame(w *wireRecord) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(256)
	buf.Write(make([]byte, frameHeaderLen))
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(w); err != nil {
		return nil, fmt.Errorf("encode %s record for %s: %w", w.Kind, w.GTRID, err)
	}
	frame := buf.Bytes()
	payload := frame[frameHeaderLen:]
	if len(payload) > maxRecordLen {
		return nil, fmt.Errorf("%s record for %s is %d bytes, more than the limit of %d", w.Kind, w.GTRID, len(payload), maxRecordLen)
	}
	binary.LittleEndian.PutUint32(frame[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(frame[4:8], crc32.Checksum(payload, castagnoli))
	return frame, nil
}

// prepareRecord encodes w and decodes the result again, so that what the log
// keeps in memory is exactly what a replay of the file will produce (times in
// UTC without a monotonic reading, invalid UTF-8 replaced as encoding/json
// replaces it, canonical gtrid, nil for empty slices).
func prepareRecord(w *wireRecord) (*logRecord, []byte, error) {
	frame, err := encodeFrame(w)
	if err != nil {
		return nil, nil, err
	}
	rec, err := decodePayload(frame[frameHeaderLen:])
	if err != nil {
		return nil, nil, err
	}
	return rec, frame, nil
}

// decodePayload decodes one record payload (CRC already checked).
func decodePayload(payload []byte) (*logRecord, error) {
	var w wireRecord
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("undecodable record: %w", err)
	}
	labelled := w.Kind == labelledCommitKind
	kind, ok := parseRecKind(w.Kind)
	if labelled {
		kind, ok = recCommit, true
		if w.Label == "" {
			return nil, fmt.Errorf("%s record without a label", labelledCommitKind)
		}
		if err := drivers.ValidateLabel(w.Label); err != nil {
			return nil, fmt.Errorf("%s record: %w", labelledCommitKind, err)
		}
	} else if w.Label != "" {
		return nil, fmt.Errorf("%s record with a label", w.Kind)
	}
	if !ok {
		return nil, fmt.Errorf("unknown record kind %q (written by a newer xabridge?)", w.Kind)
	}
	switch kind {
	case recHeader:
		if w.Version != formatVersion {
			return nil, fmt.Errorf("header of format version %d, this xabridge reads %d", w.Version, formatVersion)
		}
		return &logRecord{kind: kind, at: w.At.UTC(), version: w.Version, node: w.Node}, nil
	case recSeal:
		return &logRecord{kind: kind, at: w.At.UTC(), seq: w.Seq, durable: w.Durable}, nil
	}
	g, err := drivers.ParseGlobalID(w.GTRID)
	if err != nil {
		return nil, fmt.Errorf("%s record: %w", kind, err)
	}
	r := &logRecord{kind: kind, key: w.GTRID, gtrid: g, at: w.At.UTC()}
	switch kind {
	case recCommit:
		var ps []Participant
		if len(w.Participants) > 0 {
			ps = w.Participants
		}
		r.decision = &Decision{GTRID: g, Participants: ps, At: r.at, Label: w.Label}
	case recAbort, recAction:
		r.action = &Action{
			GTRID:     g,
			Resource:  w.Resource,
			Branch:    w.Branch,
			Op:        w.Op,
			Reason:    w.Reason,
			Actor:     w.Actor,
			Heuristic: w.Heuristic,
			At:        r.at,
		}
	}
	return r, nil
}

// frameAt checks the frame starting at off. It returns the payload and the
// offset of the next frame, or a description of what is wrong.
func frameAt(data []byte, off int) (payload []byte, next int, problem string) {
	rem := len(data) - off
	if rem < frameHeaderLen {
		return nil, 0, fmt.Sprintf("partial frame header (%d of %d bytes)", rem, frameHeaderLen)
	}
	n := int(binary.LittleEndian.Uint32(data[off:]))
	if n == 0 || n > maxRecordLen {
		return nil, 0, fmt.Sprintf("invalid record length %d", n)
	}
	if n > rem-frameHeaderLen {
		return nil, 0, fmt.Sprintf("record length %d runs past the end of the file", n)
	}
	payload = data[off+frameHeaderLen : off+frameHeaderLen+n]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(data[off+4:]) {
		return nil, 0, "checksum mismatch"
	}
	return payload, off + frameHeaderLen + n, ""
}

// appendSealFrame appends a seal frame to b. It writes the JSON by hand (the
// same object encodeFrame would make of the wireRecord; decodePayload reads
// either) because every batch pays for it.
func appendSealFrame(b []byte, seq uint64, durable int64, at time.Time) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, `{"k":"seal","t":"`...)
	b = at.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","n":`...)
	b = strconv.AppendUint(b, seq, 10)
	if durable != 0 {
		b = append(b, `,"d":`...)
		b = strconv.AppendInt(b, durable, 10)
	}
	b = append(b, "}\n"...)
	payload := b[start+frameHeaderLen:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}
