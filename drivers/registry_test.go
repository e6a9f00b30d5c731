package drivers

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://u:s3cret@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable"},
		{"mysql://root@127.0.0.1:3306/x", "mysql://root@127.0.0.1:3306/x"},
		{"postgres://h/db?password=s3cret", "postgres://h/db?password=xxxxx"},
		{"mysql://u:s3%25cret@h/db", "mysql://u:xxxxx@h/db"},
		{"postgres://u:s3cret@[::1", "postgres://(unparseable)"},
		{"u:s3cret@tcp(h)/db", "(unparseable)"},
	}
	for _, tt := range tests {
		got := RedactURL(tt.in)
		if got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("RedactURL(%q) leaks the password", tt.in)
		}
	}
}

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
