package startup

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// listed is a resource whose only behaviour is its XA RECOVER list: the
// rest of drivers.Resource is not used by InDoubt.
type listed struct {
	drivers.Resource
	ps  []drivers.Prepared
	err error
}

func (l listed) Recover(context.Context) ([]drivers.Prepared, error) { return l.ps, l.err }

func prepared(t *testing.T, node string, ours bool) drivers.Prepared {
	t.Helper()
	now := time.Now()
	g, err := drivers.NewGlobalID(node, now, 1, now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	return drivers.Prepared{XID: drivers.XID{Global: g}, Ours: ours}
}

// InDoubt counts only xabridge's own branches whose global id names the
// node (any node for ""), over every resource, and fails when a resource
// cannot be listed.
func TestInDoubt(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name      string
		node      string
		resources func() []drivers.Resource
		want      int
		err       error
	}{
		{"none", "n1", func() []drivers.Resource { return nil }, 0, nil},
		{"ours and others", "n1", func() []drivers.Resource {
			return []drivers.Resource{
				listed{ps: []drivers.Prepared{prepared(t, "n1", true), prepared(t, "n2", true), prepared(t, "n1", false)}},
				listed{ps: []drivers.Prepared{prepared(t, "n1", true)}},
			}
		}, 2, nil},
		{"any node of ours", "", func() []drivers.Resource {
			return []drivers.Resource{
				listed{ps: []drivers.Prepared{prepared(t, "n1", true), prepared(t, "n2", true), prepared(t, "n1", false)}},
			}
		}, 2, nil},
		{"unlistable", "n1", func() []drivers.Resource {
			return []drivers.Resource{listed{ps: []drivers.Prepared{prepared(t, "n1", true)}}, listed{err: boom}}
		}, 0, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := InDoubt(context.Background(), tt.node, tt.resources()...)
			if n != tt.want || !errors.Is(err, tt.err) {
				t.Fatalf("InDoubt = %d, %v; want %d, %v", n, err, tt.want, tt.err)
			}
		})
	}
}

// Found is true when the pass rolled back, committed or left anything.
func TestResultFound(t *testing.T) {
	tests := []struct {
		r    Result
		want bool
	}{
		{Result{Took: time.Second}, false},
		{Result{RolledBack: 1}, true},
		{Result{Committed: 1}, true},
		{Result{Left: 1}, true},
	}
	for _, tt := range tests {
		if got := tt.r.Found(); got != tt.want {
			t.Errorf("%+v.Found() = %v, want %v", tt.r, got, tt.want)
		}
	}
}
