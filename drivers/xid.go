package drivers

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// FormatID is the X/Open formatID of every XID xabridge creates ("xab1").
// Branches with any other formatID are foreign and never touched.
const FormatID int32 = 'x'<<24 | 'a'<<16 | 'b'<<8 | '1'

// GIDPrefix starts every PostgreSQL gid xabridge creates.
const GIDPrefix = "xab1:"

// MaxNodeIDLen is the longest coordinator node id; it keeps the gtrid within
// MySQL's 64-byte limit.
const MaxNodeIDLen = 24

// MaxBranches is how many branches one global transaction can have.
const MaxBranches = 256

// GlobalID identifies one global transaction (the XID's gtrid). It carries
// the coordinator node that owns it, its begin time (so its age can be read
// from any prepared branch), a sequence number that makes it unique, and the
// deadline after which no commit decision may be written for it (the fence).
//
// A GlobalID is canonical by construction: its fields are unexported, times
// are held as Unix milliseconds, and the only ways to make one are
// NewGlobalID and the parsers, which validate. So two GlobalIDs are == exactly
// when their text forms are equal, and one can key a map. The zero GlobalID
// (IsZero) is the only one that is not valid.
//
// Its text form uses only [a-z0-9.-], so it can never break SQL quoting:
//
//	node.BBBBBBBBBBBB.SSSSSSSS.DDDDDDDDDDDD
//
// with the begin and deadline times as 12 lowercase hex digits of Unix
// milliseconds and the sequence as 8 lowercase hex digits.
type GlobalID struct {
	node     string
	begin    int64 // Unix milliseconds
	seq      uint32
	deadline int64 // Unix milliseconds
}

// maxMs bounds the times a GlobalID can carry: 12 hex digits of milliseconds.
const maxMs = 1 << 48

// NewGlobalID returns the GlobalID of node, begun at begin, with sequence
// number seq and fence deadline. Times are truncated to milliseconds (the
// precision of the text form). It fails unless node is a valid node id (see
// ValidateNodeID), both times fall between 1970 and the year 10889, and the
// deadline is not before the begin time.
func NewGlobalID(node string, begin time.Time, seq uint32, deadline time.Time) (GlobalID, error) {
	g := GlobalID{node: node, begin: begin.UnixMilli(), seq: seq, deadline: deadline.UnixMilli()}
	if err := g.Validate(); err != nil {
		return GlobalID{}, err
	}
	return g, nil
}

// MustGlobalID is NewGlobalID for arguments known to be valid (tests,
// fixtures); it panics on an error.
func MustGlobalID(node string, begin time.Time, seq uint32, deadline time.Time) GlobalID {
	g, err := NewGlobalID(node, begin, seq, deadline)
	if err != nil {
		panic("drivers: MustGlobalID: " + err.Error())
	}
	return g
}

// Node returns the coordinator node id that owns the transaction.
func (g GlobalID) Node() string { return g.node }

// Begin returns when the transaction began (UTC, millisecond precision).
func (g GlobalID) Begin() time.Time { return time.UnixMilli(g.begin).UTC() }

// Seq returns the sequence number that makes the id unique.
func (g GlobalID) Seq() uint32 { return g.seq }

// Deadline returns the transaction's fence: no commit decision may be
// written at or after it (UTC, millisecond precision).
func (g GlobalID) Deadline() time.Time { return time.UnixMilli(g.deadline).UTC() }

// ValidateNodeID reports whether id can be used as a coordinator node id:
// 1 to 24 characters of [a-z0-9-], starting with a letter or digit.
func ValidateNodeID(id string) error {
	if id == "" {
		return errors.New("node id is empty")
	}
	if len(id) > MaxNodeIDLen {
		return fmt.Errorf("node id %q is longer than %d characters", truncate(id, 40), MaxNodeIDLen)
	}
	if id[0] == '-' {
		return fmt.Errorf("node id %q must start with a letter or digit", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("node id %q may only contain a-z, 0-9 and '-'", truncate(id, 40))
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// String returns the canonical text form, which is also the gtrid.
func (g GlobalID) String() string {
	var b strings.Builder
	b.Grow(len(g.node) + 36)
	b.WriteString(g.node)
	b.WriteByte('.')
	writeHex(&b, uint64(g.begin), 12)
	b.WriteByte('.')
	writeHex(&b, uint64(g.seq), 8)
	b.WriteByte('.')
	writeHex(&b, uint64(g.deadline), 12)
	return b.String()
}

// IsZero reports whether g is the zero GlobalID.
func (g GlobalID) IsZero() bool { return g == GlobalID{} }

// Validate reports whether g can be encoded: a valid node id and times that
// fit the format, with the deadline not before the begin time. Every
// GlobalID but the zero one is valid by construction.
func (g GlobalID) Validate() error {
	if err := ValidateNodeID(g.node); err != nil {
		return err
	}
	b, d := g.begin, g.deadline
	if b < 0 || b >= maxMs || d < 0 || d >= maxMs {
		return errors.New("global id time out of range")
	}
	if d < b {
		return errors.New("global id deadline is before its begin time")
	}
	return nil
}

func writeHex(b *strings.Builder, v uint64, width int) {
	const digits = "0123456789abcdef"
	for i := width - 1; i >= 0; i-- {
		b.WriteByte(digits[(v>>(4*uint(i)))&0xf])
	}
}

// ParseGlobalID parses the canonical text form of a GlobalID. Anything else,
// including non-canonical spellings of a valid id, is an error, so that
// ParseGlobalID(s).String() == s whenever it succeeds.
func ParseGlobalID(s string) (GlobalID, error) {
	var g GlobalID
	if len(s) > MaxNodeIDLen+36 {
		return g, fmt.Errorf("not a xabridge global id: too long (%d bytes)", len(s))
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return g, fmt.Errorf("not a xabridge global id: %q", truncate(s, 80))
	}
	if err := ValidateNodeID(parts[0]); err != nil {
		return g, fmt.Errorf("not a xabridge global id: %w", err)
	}
	begin, ok1 := parseHex(parts[1], 12)
	seq, ok2 := parseHex(parts[2], 8)
	dl, ok3 := parseHex(parts[3], 12)
	if !ok1 || !ok2 || !ok3 || dl < begin {
		return g, fmt.Errorf("not a xabridge global id: %q", truncate(s, 80))
	}
	return GlobalID{node: parts[0], begin: int64(begin), seq: uint32(seq), deadline: int64(dl)}, nil
}

// parseHex accepts exactly width lowercase hex digits.
func parseHex(s string, width int) (uint64, bool) {
	if len(s) != width {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// MaxLabelLen is the longest label a global transaction can carry, in
// bytes. The bqual (two hex digits, '.', the label) then takes at most 63
// of MySQL's 64 bytes.
const MaxLabelLen = 60

// ValidateLabel reports whether label can be attached to a global
// transaction: empty (no label), or 1 to MaxLabelLen characters of
// [A-Za-z0-9._:/#@+-]. The alphabet keeps a label safe wherever it goes: in
// the PostgreSQL gid inside a SQL string literal (no quote, no backslash),
// in log lines and in table output (no space, no control character). Nothing is ever truncated or rewritten: a
// label that does not fit is an error.
func ValidateLabel(label string) error {
	if len(label) > MaxLabelLen {
		return fmt.Errorf("label %q is %d bytes, longer than %d", truncate(label, 40), len(label), MaxLabelLen)
	}
	for i := 0; i < len(label); i++ {
		if !labelByte(label[i]) {
			return fmt.Errorf("label %q has the character %q at byte %d: a label may only contain A-Z, a-z, 0-9 and . _ : / # @ + -",
				truncate(label, 40), rune(label[i]), i)
		}
	}
	return nil
}

func labelByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '.', '_', ':', '/', '#', '@', '+', '-':
		return true
	}
	return false
}

// XID identifies one branch of a global transaction: the global id (gtrid),
// the branch number, and the transaction's label, if it has one. The bqual
// is the branch number as two lowercase hex digits, followed by '.' and the
// label when there is one: so a prepared branch carries its transaction's
// label into the database itself, and an operator sees it on a branch left
// in doubt before any decision was written. Every branch of a global
// transaction carries the same label. Two XIDs of the same branch with
// different labels are different XIDs: the databases know the branch by its
// full bqual.
type XID struct {
	Global GlobalID
	Branch uint8
	// Label is the caller's label of the global transaction ("" for none);
	// see ValidateLabel.
	Label string
}

// String returns the PostgreSQL gid form, which is also how XIDs are shown.
func (x XID) String() string { return x.GID() }

// BranchQualifier returns the bqual: the branch number as two hex digits,
// then '.' and the label when the XID has one.
func (x XID) BranchQualifier() string {
	var b strings.Builder
	b.Grow(3 + len(x.Label))
	writeHex(&b, uint64(x.Branch), 2)
	if x.Label != "" {
		b.WriteByte('.')
		b.WriteString(x.Label)
	}
	return b.String()
}

// GID returns the PostgreSQL gid: "xab1:" + gtrid + ":" + bqual. It is at most
// 130 bytes (PostgreSQL allows 199) and uses only [a-z0-9.:-] and, in the
// label, [A-Za-z0-9._:/#@+-].
func (x XID) GID() string {
	return GIDPrefix + x.Global.String() + ":" + x.BranchQualifier()
}

// parseBqual decodes a bqual: two lowercase hex digits, optionally followed
// by '.' and a valid, non-empty label.
func parseBqual(bq string) (branch uint8, label string, ok bool) {
	if len(bq) < 2 {
		return 0, "", false
	}
	br, ok := parseHex(bq[:2], 2)
	if !ok {
		return 0, "", false
	}
	rest := bq[2:]
	if rest == "" {
		return uint8(br), "", true
	}
	label, ok = strings.CutPrefix(rest, ".")
	if !ok || label == "" || ValidateLabel(label) != nil {
		return 0, "", false
	}
	return uint8(br), label, true
}

// ParseGID decodes a PostgreSQL gid. It reports false for anything that is
// not exactly a gid xabridge would create: such a prepared transaction is
// foreign and must be left alone.
func ParseGID(gid string) (XID, bool) {
	rest, ok := strings.CutPrefix(gid, GIDPrefix)
	if !ok {
		return XID{}, false
	}
	gtrid, bq, ok := strings.Cut(rest, ":")
	if !ok {
		return XID{}, false
	}
	g, err := ParseGlobalID(gtrid)
	if err != nil {
		return XID{}, false
	}
	br, label, ok := parseBqual(bq)
	if !ok {
		return XID{}, false
	}
	return XID{Global: g, Branch: br, Label: label}, true
}

// MySQL returns the XID as MySQL/MariaDB XA syntax: X'gtrid',X'bqual',formatID.
// Hex literals mean no byte of the id can ever be read as SQL.
func (x XID) MySQL() string {
	gtrid := x.Global.String()
	bq := x.BranchQualifier()
	return "X'" + hex.EncodeToString([]byte(gtrid)) + "',X'" + hex.EncodeToString([]byte(bq)) + "'," +
		strconv.FormatInt(int64(FormatID), 10)
}

// ParseMySQLXID decodes one row of XA RECOVER (formatID, gtrid_length,
// bqual_length, data). It reports false for anything xabridge did not create.
func ParseMySQLXID(formatID int64, gtridLen, bqualLen int64, data []byte) (XID, bool) {
	if formatID != int64(FormatID) || gtridLen < 0 || bqualLen < 0 ||
		gtridLen > 64 || bqualLen > 64 || int64(len(data)) != gtridLen+bqualLen {
		return XID{}, false
	}
	g, err := ParseGlobalID(string(data[:gtridLen]))
	if err != nil {
		return XID{}, false
	}
	br, label, ok := parseBqual(string(data[gtridLen:]))
	if !ok {
		return XID{}, false
	}
	return XID{Global: g, Branch: br, Label: label}, true
}

// ParseXID accepts either a gid ("xab1:gtrid:bq") or a bare gtrid for the
// branch-less forms operators type. The bool result reports whether a branch
// was given.
func ParseXID(s string) (XID, bool, error) {
	if x, ok := ParseGID(s); ok {
		return x, true, nil
	}
	g, err := ParseGlobalID(s)
	if err != nil {
		return XID{}, false, err
	}
	return XID{Global: g}, false, nil
}

// Validate reports whether x is a well-formed xabridge XID. Adapters call it
// before x reaches any SQL text, so a hand-built XID with hostile bytes in its
// node id is refused with an error instead of being sent.
func (x XID) Validate() error {
	if err := x.Global.Validate(); err != nil {
		return fmt.Errorf("invalid xid: %w", err)
	}
	if err := ValidateLabel(x.Label); err != nil {
		return fmt.Errorf("invalid xid: %w", err)
	}
	return nil
}
