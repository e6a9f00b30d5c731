package decisionlog

import (
	"strings"
	"testing"

	"github.com/xabridge/xabridge/drivers"
)

// The participants column of a keeper or shared store row: an array
// without a label (as before labels existed), an object with one; both
// decode, and anything else is refused.
func TestEncodeDecodeParticipants(t *testing.T) {
	ps := []Participant{{Resource: "pg", Branch: 1, ID: "pg:1"}, {Resource: "mysql", Branch: 2}}
	for _, tc := range []struct {
		name  string
		label string
		ps    []Participant
		want  string
	}{
		{"plain", "", ps, `[{"r":"pg","b":1,"id":"pg:1"},{"r":"mysql","b":2}]`},
		{"labelled", "order-7", ps, `{"l":"order-7","p":[{"r":"pg","b":1,"id":"pg:1"},{"r":"mysql","b":2}]}`},
		{"labelled, no participants", "o", nil, `{"l":"o","p":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeDecision(Decision{Participants: tc.ps, Label: tc.label})
			if err != nil || string(b) != tc.want {
				t.Fatalf("EncodeDecision = %s, %v; want %s", b, err, tc.want)
			}
			got, label, err := DecodeParticipants(b)
			if err != nil || label != tc.label || len(got) != len(tc.ps) {
				t.Fatalf("DecodeParticipants(%s) = %+v, %q, %v", b, got, label, err)
			}
			for i := range got {
				if got[i] != tc.ps[i] {
					t.Errorf("participant %d = %+v", i, got[i])
				}
			}
			g := drivers.MustGlobalID("n", flT0, 1, flT0.Add(1))
			d, err := DecodeRow("t", g, RowCommit, b)
			if err != nil || d.Label != tc.label || d.GTRID != g {
				t.Fatalf("DecodeRow = %+v, %v", d, err)
			}
		})
	}
	// PostgreSQL's jsonb gives the object back with its own spacing.
	if _, label, err := DecodeParticipants([]byte(` {"l": "x", "p": [{"b": 1, "r": "pg"}]}`)); err != nil || label != "x" {
		t.Errorf("jsonb spelling: %q, %v", label, err)
	}
	for _, bad := range []string{
		`{"l":"","p":[]}`, `{"l":"a b","p":[]}`, `{"p":[]}`, `{"l":"x","p":[],"more":1}`,
		`{"l":"` + strings.Repeat("x", drivers.MaxLabelLen+1) + `","p":[]}`, `"x"`, `{`,
	} {
		if ps, label, err := DecodeParticipants([]byte(bad)); err == nil {
			t.Errorf("DecodeParticipants(%s) = %+v, %q", bad, ps, label)
		}
	}
	if _, err := EncodeDecision(Decision{Label: "a'b"}); err == nil {
		t.Error("EncodeDecision accepted an invalid label")
	}
}
