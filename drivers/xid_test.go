package drivers

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func sampleXID() XID {
	begin := time.UnixMilli(1_780_000_000_123).UTC()
	return XID{
		Global: MustGlobalID("node-1", begin, 0xdeadbeef, begin.Add(30*time.Second)),
		Branch: 1,
	}
}

func TestXIDEncodings(t *testing.T) {
	x := sampleXID()
	gid := x.GID()
	want := "xab1:node-1.019e7044887b.deadbeef.019e7044fdab:01"
	if gid != want {
		t.Fatalf("GID = %q, want %q", gid, want)
	}
	back, ok := ParseGID(gid)
	if !ok || back != x {
		t.Fatalf("ParseGID(%q) = %v, %v", gid, back, ok)
	}
	my := x.MySQL()
	wantMy := "X'" + hex.EncodeToString([]byte(x.Global.String())) + "',X'3031',2019648049"
	if my != wantMy {
		t.Fatalf("MySQL = %q, want %q", my, wantMy)
	}
	g := []byte(x.Global.String())
	data := append(append([]byte{}, g...), "01"...)
	back, ok = ParseMySQLXID(int64(FormatID), int64(len(g)), 2, data)
	if !ok || back != x {
		t.Fatalf("ParseMySQLXID = %v, %v", back, ok)
	}
}

func TestLimits(t *testing.T) {
	begin := time.UnixMilli(1<<48 - 1).UTC()
	x := XID{Global: MustGlobalID(strings.Repeat("z", MaxNodeIDLen), begin, ^uint32(0), begin), Branch: 255}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
	if n := len(x.GID()); n >= 200 {
		t.Fatalf("longest gid is %d bytes; PostgreSQL allows 199", n)
	}
	if n := len(x.Global.String()); n > 64 {
		t.Fatalf("longest gtrid is %d bytes; MySQL allows 64", n)
	}
	if n := len(x.BranchQualifier()); n > 64 {
		t.Fatalf("bqual is %d bytes", n)
	}
}

func TestHostileAndForeignIDsAreNotOurs(t *testing.T) {
	good := sampleXID().GID()
	gids := []string{
		"",
		"g1",
		"xab1:",
		"xab1::",
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b",        // no branch
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:1",      // short branch
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:001",    // long branch
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:0G",     // not hex
		"xab1:node-1.019E6D9EBC7B.deadbeef.019e6d9f2f8b:01",     // upper-case hex is not canonical
		"xab1:Node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01",     // upper-case node
		"xab1:-node.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01",      // leading dash
		"xab1:no'de.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01",      // quote
		"xab1:node-1.019e6d9f2f8b.deadbeef.019e6d9ebc7b:01",     // deadline before begin
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01 ",    // trailing space
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01\x00", // NUL
		"XAB1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01",
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b.00:01",
		"xab1:" + strings.Repeat("a", 25) + ".019e6d9ebc7b.deadbeef.019e6d9f2f8b:01",
		"xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01'; DROP TABLE t; --",
		"1096044365_dGVzdA==_YnE=", // pgjdbc-style gid
		"citus_0_123_4_5",
		good[:len(good)-1],
	}
	for _, s := range gids {
		if x, ok := ParseGID(s); ok {
			t.Errorf("ParseGID(%q) = %v, want foreign", s, x)
		}
	}
	if _, ok := ParseGID(good); !ok {
		t.Fatalf("ParseGID rejects a valid gid")
	}

	g := []byte(sampleXID().Global.String())
	data := append(append([]byte{}, g...), "01"...)
	mysqlRows := []struct {
		name        string
		fmt, gl, bl int64
		data        []byte
	}{
		{"other formatID", 1, int64(len(g)), 2, data},
		{"JTA formatID", 131077, int64(len(g)), 2, data},
		{"length mismatch", int64(FormatID), int64(len(g)), 3, data},
		{"negative length", int64(FormatID), -1, 2, data},
		{"split wrong", int64(FormatID), int64(len(g)) - 1, 3, data},
		{"binary garbage", int64(FormatID), 4, 2, []byte{0, 0xff, 1, 2, 3, 4}},
		{"too long", int64(FormatID), 65, 0, make([]byte, 65)},
	}
	for _, r := range mysqlRows {
		if x, ok := ParseMySQLXID(r.fmt, r.gl, r.bl, r.data); ok {
			t.Errorf("%s: ParseMySQLXID = %v, want foreign", r.name, x)
		}
	}
}

// A GlobalID cannot be built with hostile bytes or out-of-range times: the
// constructor refuses them, and the zero GlobalID (the only one left) does
// not validate.
func TestNewGlobalIDRefusesInvalid(t *testing.T) {
	now := time.Now()
	for _, node := range []string{"", "x'; drop table t; --", "UPPER", strings.Repeat("a", 25), "a.b", "a:b", "é"} {
		if g, err := NewGlobalID(node, now, 0, now); err == nil {
			t.Errorf("NewGlobalID accepted node %q: %v", node, g)
		}
	}
	for _, tt := range []struct {
		name            string
		begin, deadline time.Time
	}{
		{"deadline before begin", now, now.Add(-time.Second)},
		{"before 1970", time.UnixMilli(-1), now},
		{"beyond 48 bits", now, time.UnixMilli(1 << 48)},
	} {
		if g, err := NewGlobalID("ok", tt.begin, 0, tt.deadline); err == nil {
			t.Errorf("%s: NewGlobalID accepted %v", tt.name, g)
		}
	}
	if err := (XID{}).Validate(); err == nil {
		t.Error("Validate accepted the zero XID")
	}
}

// Two GlobalIDs are == exactly when they encode the same: times of any
// location and sub-millisecond part are truncated on the way in.
func TestGlobalIDCanonical(t *testing.T) {
	begin := time.Date(2026, 12, 4, 11, 0, 0, 123_456_789, time.UTC)
	paris := time.FixedZone("CET", 3600)
	a := MustGlobalID("n", begin, 7, begin.Add(time.Minute))
	b := MustGlobalID("n", begin.In(paris).Add(400*time.Microsecond), 7, begin.Add(time.Minute).In(paris))
	if a != b || a.String() != b.String() {
		t.Fatalf("%v != %v", a, b)
	}
	back, err := ParseGlobalID(a.String())
	if err != nil || back != a {
		t.Fatalf("ParseGlobalID(%s) = %v, %v", a, back, err)
	}
	if a.Node() != "n" || a.Seq() != 7 || !a.Begin().Equal(begin.Truncate(time.Millisecond)) ||
		a.Begin().Location() != time.UTC || !a.Deadline().Equal(begin.Add(time.Minute).Truncate(time.Millisecond)) {
		t.Fatalf("accessors: %s %d %v %v", a.Node(), a.Seq(), a.Begin(), a.Deadline())
	}
	if a.IsZero() || !(GlobalID{}).IsZero() {
		t.Fatal("IsZero")
	}
}

func TestParseXID(t *testing.T) {
	x := sampleXID()
	got, hasBranch, err := ParseXID(x.GID())
	if err != nil || !hasBranch || got != x {
		t.Fatalf("ParseXID(gid) = %v %v %v", got, hasBranch, err)
	}
	got, hasBranch, err = ParseXID(x.Global.String())
	if err != nil || hasBranch || got.Global != x.Global {
		t.Fatalf("ParseXID(gtrid) = %v %v %v", got, hasBranch, err)
	}
	if _, _, err := ParseXID("robert'); DROP TABLE students;--"); err == nil {
		t.Fatal("ParseXID accepted garbage")
	}
}

// FuzzParseGID checks the gid codec is total and canonical: any string
// either is foreign, or decodes to an XID that encodes back to exactly the
// same string and uses only the safe alphabet.
func FuzzParseGID(f *testing.F) {
	f.Add(sampleXID().GID())
	f.Add("xab1:a.000000000000.00000000.000000000000:00")
	f.Add("g1")
	f.Add("xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01'")
	f.Add("xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01.order-123")
	f.Add("xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01.")
	f.Add("xab1:node-1.019e6d9ebc7b.deadbeef.019e6d9f2f8b:01.a'b")
	f.Fuzz(func(t *testing.T, s string) {
		x, ok := ParseGID(s)
		if !ok {
			return
		}
		if x.GID() != s {
			t.Fatalf("ParseGID(%q).GID() = %q", s, x.GID())
		}
		if err := x.Validate(); err != nil {
			t.Fatalf("decoded XID is invalid: %v", err)
		}
		for _, c := range s {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".:-_/#@+", c)) {
				t.Fatalf("gid %q has unsafe character %q", s, c)
			}
		}
		if len(s) >= 200 {
			t.Fatalf("gid %q is %d bytes", s, len(s))
		}
	})
}

// FuzzParseMySQLXID checks the XA RECOVER decoder is total and canonical.
func FuzzParseMySQLXID(f *testing.F) {
	x := sampleXID()
	g := []byte(x.Global.String())
	f.Add(int64(FormatID), int64(len(g)), int64(2), append(append([]byte{}, g...), "01"...))
	f.Add(int64(1), int64(2), int64(1), []byte("abc"))
	f.Add(int64(FormatID), int64(len(g)), int64(12), append(append([]byte{}, g...), "01.order-123"...))
	f.Fuzz(func(t *testing.T, fmtID, gl, bl int64, data []byte) {
		x, ok := ParseMySQLXID(fmtID, gl, bl, data)
		if !ok {
			return
		}
		if fmtID != int64(FormatID) {
			t.Fatalf("decoded a foreign formatID %d", fmtID)
		}
		if got := x.Global.String() + x.BranchQualifier(); got != string(data) {
			t.Fatalf("re-encoded %q, data was %q", got, data)
		}
		if len(x.BranchQualifier()) > 64 {
			t.Fatalf("bqual of %d bytes", len(x.BranchQualifier()))
		}
	})
}

// FuzzParseGlobalID checks round trips of the gtrid text form.
func FuzzParseGlobalID(f *testing.F) {
	f.Add(sampleXID().Global.String())
	f.Add("a.000000000000.00000000.000000000000")
	f.Fuzz(func(t *testing.T, s string) {
		g, err := ParseGlobalID(s)
		if err != nil {
			return
		}
		if g.String() != s {
			t.Fatalf("ParseGlobalID(%q).String() = %q", s, g.String())
		}
		if again, err := NewGlobalID(g.Node(), g.Begin(), g.Seq(), g.Deadline()); err != nil || again != g {
			t.Fatalf("NewGlobalID from the accessors of %q = %v, %v", s, again, err)
		}
		if len(s) > 64 {
			t.Fatalf("accepted a %d-byte gtrid", len(s))
		}
	})
}

// ErrConflict is a kind of ErrRetryable: callers that only know the
// classes see a retryable error.
func TestErrConflictIsRetryable(t *testing.T) {
	err := NewError("pg", "exec", XID{}, ErrConflict, errors.New("40P01"))
	if !errors.Is(err, ErrConflict) || !errors.Is(err, ErrRetryable) || Classify(err) != ErrRetryable {
		t.Fatalf("%v: Is conflict %v, Is retryable %v, Classify %v", err, errors.Is(err, ErrConflict), errors.Is(err, ErrRetryable), Classify(err))
	}
	if errors.Is(ErrRetryable, ErrConflict) {
		t.Fatal("every retryable error is not a conflict")
	}
}

func TestValidateLabel(t *testing.T) {
	long := strings.Repeat("a", MaxLabelLen)
	for _, tc := range []struct {
		label string
		ok    bool
	}{
		{"", true},
		{"order-123", true},
		{"Order_42/EU#7@shop+1:x.y", true},
		{long, true},
		{long + "b", false},
		{"order 123", false},
		{"a'b", false},
		{`a\b`, false},
		{"a\nb", false},
		{"caf\u00e9", false},
		{"a\x00", false},
		{"50%", false},
		{"a;b", false},
	} {
		err := ValidateLabel(tc.label)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateLabel(%q) = %v, want ok=%v", tc.label, err, tc.ok)
		}
		x := sampleXID()
		x.Label = tc.label
		if verr := x.Validate(); (verr == nil) != tc.ok {
			t.Errorf("XID{Label: %q}.Validate() = %v, want ok=%v", tc.label, verr, tc.ok)
		}
	}
}

// A labelled XID round-trips through both encodings with its label, and the
// sizes stay within the engines' limits even at the longest node id and
// label.
func TestLabelledXIDRoundTrip(t *testing.T) {
	node := strings.Repeat("n", MaxNodeIDLen)
	g := MustGlobalID(node, time.UnixMilli(1<<47), 0xffffffff, time.UnixMilli(1<<47+1))
	for _, label := range []string{"", "o", "order-123", strings.Repeat("Z", MaxLabelLen)} {
		x := XID{Global: g, Branch: 0xff, Label: label}
		back, ok := ParseGID(x.GID())
		if !ok || back != x {
			t.Fatalf("ParseGID(%q) = %+v, %v", x.GID(), back, ok)
		}
		if _, err := checkGIDLen(x.GID()); err != nil {
			t.Fatal(err)
		}
		gt, bq := x.Global.String(), x.BranchQualifier()
		if len(gt) > 64 || len(bq) > 64 {
			t.Fatalf("gtrid %d bytes, bqual %d bytes", len(gt), len(bq))
		}
		my, ok := ParseMySQLXID(int64(FormatID), int64(len(gt)), int64(len(bq)), []byte(gt+bq))
		if !ok || my != x {
			t.Fatalf("ParseMySQLXID(%q) = %+v, %v", gt+bq, my, ok)
		}
		px, hasBranch, err := ParseXID(x.GID())
		if err != nil || !hasBranch || px != x {
			t.Fatalf("ParseXID(%q) = %+v %v %v", x.GID(), px, hasBranch, err)
		}
	}
	// A gid whose bqual has a label part that is not a valid label is not ours.
	for _, bad := range []string{":01.", ":01.a b", ":01x", ":01." + strings.Repeat("a", MaxLabelLen+1), ":01.a'"} {
		if x, ok := ParseGID(GIDPrefix + g.String() + bad); ok {
			t.Errorf("ParseGID accepted bqual %q as %+v", bad, x)
		}
	}
}

func checkGIDLen(gid string) (int, error) {
	if len(gid) >= 200 {
		return 0, errors.New("gid " + gid + " is too long for PostgreSQL")
	}
	return len(gid), nil
}
