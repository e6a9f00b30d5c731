package decisionlog

import (
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"pgregory.net/rapid"
)

// The done set answers exactly like a map, whatever the order gtrids end
// in, including gtrids that do not pack.
func TestDoneSetModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var s doneSet
		model := map[drivers.GlobalID]uint32{}
		nodes := []string{"node-1", "node-2", "a"}
		gen := rapid.Custom(func(t *rapid.T) drivers.GlobalID {
			begin := flT0.Add(time.Duration(rapid.IntRange(0, 5000).Draw(t, "begin")) * time.Millisecond)
			dl := time.Duration(rapid.IntRange(0, 60_000).Draw(t, "dl")) * time.Millisecond // a canonical id never has its deadline before its begin
			if rapid.IntRange(0, 50).Draw(t, "fine") == 0 {
				dl += time.Microsecond // does not pack
			}
			return drivers.MustGlobalID(rapid.SampledFrom(nodes).Draw(t, "node"), begin, uint32(rapid.IntRange(0, 3).Draw(t, "seq")), begin.Add(dl))
		})
		n := rapid.IntRange(0, 3000).Draw(t, "n")
		for i := range n {
			g := gen.Draw(t, "g")
			if _, ok := model[g]; ok {
				continue
			}
			s.add(g, uint64(i))
			model[g] = uint32(i)
		}
		if s.len() != len(model) {
			t.Fatalf("len %d, want %d", s.len(), len(model))
		}
		for g, first := range model {
			if got, ok := s.lookup(g); !ok || got != first {
				t.Fatalf("lookup(%s) = %d, %v; want %d", g, got, ok, first)
			}
		}
		for range 50 {
			g := gen.Draw(t, "probe")
			if _, want := model[g]; s.has(g) != want {
				t.Fatalf("has(%s) = %v, want %v", g, !want, want)
			}
		}
		seen := 0
		s.each(func(g drivers.GlobalID, first uint32) {
			if model[g] != first {
				t.Fatalf("each: %s first %d, want %d", g, first, model[g])
			}
			seen++
		})
		if seen != len(model) {
			t.Fatalf("each saw %d, want %d", seen, len(model))
		}
	})
}
