package recovery

import (
	"errors"
	"strings"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/fakeres"
)

// New refuses what the CLI would refuse, with an error naming it, never a
// panic on first use.
func TestConfigRefused(t *testing.T) {
	var typedNil *fakeres.Resource
	tests := []struct {
		name string
		res  []drivers.Resource
		want string
	}{
		{"nil resource", []drivers.Resource{fakeres.New("a"), nil}, "Resources[1] is nil"},
		{"typed nil resource", []drivers.Resource{typedNil}, "Resources[0] is nil"},
		{"empty name", []drivers.Resource{fakeres.New("")}, "resource name is empty"},
		{"name the CLI rejects", []drivers.Resource{fakeres.New("a b")}, "may only contain letters, digits"},
		{"duplicate name", []drivers.Resource{fakeres.New("a"), fakeres.New("a")}, `two resources are named "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{NodeID: "n1", Log: decisionlog.NewMemLog(nil), Resources: tt.res})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

// One resource that could not be scanned counts once, however many of its
// reads failed (a keeper's decision table and its branches).
func TestUnscannedCountsResources(t *testing.T) {
	boom := errors.New("down")
	rep := &Report{ScanErrors: []ResourceError{{"pg", boom}, {"pg", boom}, {"mysql", boom}, {"pg", boom}}}
	if got := rep.Unscanned(); strings.Join(got, ",") != "pg,mysql" {
		t.Errorf("Unscanned() = %v, want [pg mysql]", got)
	}
	if got := (&Report{}).Unscanned(); len(got) != 0 {
		t.Errorf("Unscanned() of a clean report = %v", got)
	}
}

// Resolving a transaction whose only branch is prepared where the resource
// may not finish it (another database of the same PostgreSQL server, as
// the adapter's Note says) is refused with what is there, not "unknown".
func TestResolveNamesABranchInAnotherDatabase(t *testing.T) {
	note := "prepared in database other, not in this resource's database xabridge: COMMIT PREPARED must run in the database that prepared it; point the resource's URL at database other"
	elsewhere := Branch{Resource: "pg", Prepared: drivers.Prepared{XID: drivers.XID{Global: gPast, Branch: 0}, ID: "xab1:x", Database: "other", Note: note}}
	for _, commit := range []bool{true, false} {
		for _, logged := range []bool{true, false} {
			s := tsnap([]Branch{elsewhere}, func(s *snapshot) {
				if logged {
					s.entries[gPast] = committedEntry(gPast, namesA0)
				}
			})
			p := s.planResolve(resolveRequest{gtrid: gPast, commit: commit}, map[drivers.XID]bool{elsewhere.XID: true})
			if !errors.Is(p.err, ErrNotFinishableHere) || errors.Is(p.err, ErrUnknownTransaction) {
				t.Fatalf("commit=%v logged=%v: %v, want ErrNotFinishableHere", commit, logged, p.err)
			}
			for _, want := range []string{"branch 00 on resource pg", "prepared in database other", "point the resource's URL at database other"} {
				if !strings.Contains(p.err.Error(), want) {
					t.Errorf("commit=%v logged=%v: %q does not say %q", commit, logged, p.err, want)
				}
			}
			if len(p.act) != 0 || p.recordAbort || p.fenceFirst || p.end {
				t.Errorf("commit=%v logged=%v: a refused plan acts: %+v", commit, logged, p)
			}
		}
	}
}
