package decisionlog

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// A labelled decision is written as kind "lcommit" with the label in "l";
// an unlabelled one exactly as before labels existed ("commit", no "l").
func TestLabelWireFormat(t *testing.T) {
	clock := newFLClock(flT0)
	dir := t.TempDir()
	l := openFL(t, dir, clock, nil)
	d := flDecision(flG(1), "pg", "mysql")
	d.Label = "order-123"
	flCommit(t, l, d)
	flCommit(t, l, flDecision(flG(2), "pg", "mysql"))
	flClose(t, l)
	data := flReadLogFile(t, dir)
	var kinds []string
	for off := len(logMagic); off < len(data); {
		payload, next, problem := frameAt(data, off)
		if problem != "" {
			t.Fatalf("frame at %d: %s", off, problem)
		}
		s := string(payload)
		switch {
		case strings.Contains(s, flG(1).String()):
			if !strings.Contains(s, `"k":"lcommit"`) || !strings.Contains(s, `"l":"order-123"`) {
				t.Errorf("labelled decision written as %s", s)
			}
			kinds = append(kinds, "labelled")
		case strings.Contains(s, flG(2).String()):
			if !strings.Contains(s, `"k":"commit"`) || strings.Contains(s, `"l":`) {
				t.Errorf("unlabelled decision written as %s", s)
			}
			kinds = append(kinds, "plain")
		}
		off = next
	}
	if strings.Join(kinds, ",") != "labelled,plain" {
		t.Fatalf("records found: %v", kinds)
	}
	if rep, err := VerifyLog(dir); err != nil || rep.Cut != nil {
		t.Fatalf("VerifyLog = %+v, %v", rep, err)
	}
	// A torn tail after it: RepairLog cuts the tail and keeps the label.
	torn := append(bytes.Clone(data), 9, 9, 9)
	if err := os.WriteFile(filepath.Join(dir, logFileName), torn, 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, err := RepairLog(dir); err != nil || rep.Cut == nil {
		t.Fatalf("RepairLog = %+v, %v", rep, err)
	}
	l = openFL(t, dir, clock, nil)
	if e, _ := l.Lookup(flG(1)); e.Decision == nil || e.Decision.Label != "order-123" {
		t.Errorf("reopened after repair: %+v", e.Decision)
	}
}

// Records that no xabridge writes are refused, not read with a guessed
// label: a "commit" carrying a label, an "lcommit" without one or with an
// invalid one.
func TestLabelRecordsRefused(t *testing.T) {
	g := flG(1).String()
	for _, payload := range []string{
		`{"k":"commit","g":"` + g + `","t":"2030-01-02T03:04:05Z","l":"order-1"}`,
		`{"k":"lcommit","g":"` + g + `","t":"2030-01-02T03:04:05Z"}`,
		`{"k":"lcommit","g":"` + g + `","t":"2030-01-02T03:04:05Z","l":"a b"}`,
		`{"k":"lcommit","g":"` + g + `","t":"2030-01-02T03:04:05Z","l":"` + strings.Repeat("x", drivers.MaxLabelLen+1) + `"}`,
	} {
		if rec, err := decodePayload([]byte(payload + "\n")); err == nil {
			t.Errorf("decoded %s as %+v", payload, rec.decision)
		}
	}
	rec, err := decodePayload([]byte(`{"k":"lcommit","g":"` + g + `","t":"2030-01-02T03:04:05Z","p":[{"r":"pg","b":0}],"l":"o#1"}` + "\n"))
	if err != nil || rec.kind != recCommit || rec.decision.Label != "o#1" || len(rec.decision.Participants) != 1 {
		t.Fatalf("lcommit = %+v, %v", rec, err)
	}
}

// A log written by xabridge before labels existed (testdata, made by the
// main branch of 2026-12-04) opens, verifies, takes labelled decisions
// after its old ones, compacts and reopens.
func TestFileLogBeforeLabels(t *testing.T) {
	old, err := os.ReadFile(filepath.Join("testdata", "v2-before-labels", logFileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(old, []byte("lcommit")) {
		t.Fatal("the old log has labelled records")
	}
	dir := flWriteLogFile(t, old)
	if rep, err := VerifyLog(dir); err != nil || rep.Cut != nil || rep.Version != formatVersion {
		t.Fatalf("VerifyLog = %+v, %v", rep, err)
	}
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	clock := newFLClock(t0)
	gid := func(s uint32) drivers.GlobalID {
		return drivers.MustGlobalID("old-node", t0.Add(-time.Minute), s, t0.Add(time.Hour))
	}
	l, err := OpenFileLog(dir, FileLogOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string, l *FileLog) {
		t.Helper()
		e, _ := l.Lookup(gid(1))
		if e.State != StateCommitted || e.Decision == nil || e.Decision.Label != "" || len(e.Decision.Participants) != 2 ||
			e.Decision.Participants[1].ID != "mariadb:abc" {
			t.Errorf("%s: old decision = %+v", when, e.Decision)
		}
		// Compaction may drop a done transaction altogether.
		if e, _ := l.Lookup(gid(2)); e.State != StateDone && !(when != "open" && e.State == StateNone) {
			t.Errorf("%s: old ended decision: %v", when, e.State)
		}
		if e, _ := l.Lookup(gid(3)); e.State != StateAborted {
			t.Errorf("%s: old abort: %v", when, e.State)
		}
		if e, _ := l.Lookup(gid(4)); e.Decision == nil || e.Decision.Label != "order-4" {
			t.Errorf("%s: new labelled decision = %+v", when, e.Decision)
		}
	}
	d := Decision{GTRID: gid(4), Participants: []Participant{{Resource: "pg"}}, Label: "order-4"}
	if err := l.Commit(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	check("open", l)
	if err := l.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("compacted", l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = OpenFileLog(dir, FileLogOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	check("reopened", l)
}
