package drivers

import (
	"errors"
	"strings"
	"testing"
)

func TestJoinAndOneLine(t *testing.T) {
	a, b := errors.New("first"), errors.New("second\nDETAIL: more\r\n  HINT: fix it\n")
	tests := []struct {
		name string
		errs []error
		want string
	}{
		{"none", nil, ""},
		{"nils", []error{nil, nil}, ""},
		{"one", []error{nil, a}, "first"},
		{"two, one spanning lines", []error{a, nil, b}, "first; second; DETAIL: more; HINT: fix it"},
		{"a line ending in a colon", []error{errors.New("failed to connect:\n\thost a: refused\n\thost b: refused")}, "failed to connect: host a: refused; host b: refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Join(tt.errs...)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Join = %v, want nil", err)
				}
				return
			}
			if err.Error() != tt.want {
				t.Errorf("Join = %q, want %q", err, tt.want)
			}
			for _, e := range tt.errs {
				if e != nil && !errors.Is(err, e) {
					t.Errorf("errors.Is(Join, %q) is false", e)
				}
			}
		})
	}
	// An adapter error quoting a multi-line server message is one line.
	e := NewError("pg", "prepare", XID{}, ErrRefused, b)
	if s := e.Error(); strings.ContainsAny(s, "\r\n") || !errors.Is(e, b) {
		t.Errorf("Error spans lines or lost its cause: %q", s)
	}
}

func TestValidateResourceName(t *testing.T) {
	tests := []struct{ name, want string }{
		{"pg", ""},
		{"ledger_2-eu", ""},
		{"MySQL", ""},
		{strings.Repeat("a", MaxResourceNameLen), ""},
		{"", "resource name is empty"},
		{strings.Repeat("a", MaxResourceNameLen+1), "longer than 64"},
		{"my db", "may only contain letters, digits, '_' and '-'"},
		{"pg=x", "may only contain"},
		{"a,b", "may only contain"},
		{"é", "may only contain"},
		{"x'; drop", "may only contain"},
	}
	for _, tt := range tests {
		err := ValidateResourceName(tt.name)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("ValidateResourceName(%q) = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestIsNil(t *testing.T) {
	var typed *fakeResource
	tests := []struct {
		r    Resource
		want bool
	}{{nil, true}, {typed, true}, {&fakeResource{}, false}}
	for _, tt := range tests {
		if got := IsNil(tt.r); got != tt.want {
			t.Errorf("IsNil(%#v) = %v, want %v", tt.r, got, tt.want)
		}
	}
}

// fakeResource is a Resource whose methods are never called.
type fakeResource struct{ Resource }

// QuoteID shows the whole id (tables an operator copies from); DisplayID
// cuts it for prose.
func TestQuoteID(t *testing.T) {
	long := "X'" + strings.Repeat("67", 64) + "',X'" + strings.Repeat("62", 64) + "',7"
	tests := []struct{ in, want string }{
		{"xab1:n.0123:00", "xab1:n.0123:00"},
		{"", `""`},
		{"tab\there", `"tab\there"`},
		{long, `"` + long + `"`},
	}
	for _, tt := range tests {
		if got := QuoteID(tt.in); got != tt.want {
			t.Errorf("QuoteID(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := DisplayID(long); !strings.HasSuffix(got, "…") || len(got) >= len(long) {
		t.Errorf("DisplayID(long) = %q, want it cut", got)
	}
}
