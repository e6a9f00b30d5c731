package drivers

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

var registerTestScheme sync.Once

func TestOpenErrors(t *testing.T) {
	registerTestScheme.Do(func() {
		Register("xabtest", func(ctx context.Context, name, rawURL string) (Resource, io.Closer, error) {
			return nil, nil, errors.New("test opener")
		})
	})
	tests := []struct{ name, url, want string }{
		{"r", "no-scheme-here:s3cret", "not a URL"},
		{"r", "oracle://u:s3cret@h/db", `unknown scheme "oracle"`},
		{"", "xabtest://h", "name is empty"},
		{"r", "xabtest://u:s3cret@h", "test opener"},
	}
	for _, tt := range tests {
		_, _, err := Open(context.Background(), tt.name, tt.url)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q) = %v, want %q", tt.url, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q) error leaks the password: %v", tt.url, err)
		}
	}
}

func TestErrorClasses(t *testing.T) {
	cause := errors.New("driver says so")
	err := NewError("pg", "commit", XID{}, ErrInDoubt, cause)
	if !errors.Is(err, ErrInDoubt) || !errors.Is(err, cause) || errors.Is(err, ErrNotFound) {
		t.Fatalf("errors.Is on %v is wrong", err)
	}
	if Classify(err) != ErrInDoubt {
		t.Fatalf("Classify = %v", Classify(err))
	}
	if Classify(cause) != nil {
		t.Fatal("an unclassified error got a class")
	}
	if got := err.Error(); got != "pg: commit: outcome unknown: driver says so" {
		t.Fatalf("Error() = %q", got)
	}
}
