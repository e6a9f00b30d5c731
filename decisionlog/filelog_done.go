package decisionlog

import (
	"cmp"
	"slices"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// doneSet holds the transactions whose phase 2 ended, in 16 bytes each,
// until a compaction forgets them (as it forgets their records): a service
// that finished a million transactions since its last compaction must not
// keep a million entries with their participants and records in memory.
//
// It still answers "done" for them, because recovery can meet a straggler:
// a branch listed as prepared by a scan that ran just before phase 2
// committed it. "Not found" would make recovery presume abort for a
// transaction that committed; "done" makes it commit the branch (or find it
// already committed). What an ended transaction's entry loses is its
// participants and its (non-heuristic) actions: nobody acts on them once
// every branch is committed. A transaction with a heuristic action is never
// reduced to this form.
//
// Keys are kept in sorted runs of at most doneRunMax keys, plus a small
// unsorted tail. Gtrids end in about the order they began, so most tails
// append to the last run without a merge, and the runs cover disjoint
// ranges a lookup skips by their ends. Out-of-order tails become runs of
// their own, merged binary-counter fashion with runs of similar size. No
// run is larger than a few MB, so growing one never doubles the set's
// memory for a moment.
type doneSet struct {
	// A coordinator gives its transactions a few timeouts at most: each
	// (node, deadline - begin) pair gets an index, up to 1<<doneTagBits.
	tags   []doneTag
	tagIdx map[doneTag]uint32
	runs   [][]doneKey
	tail   []doneKey
	// odd holds the gtrids that do not pack (times finer than a
	// millisecond, a begin past year 2527, more than a million distinct
	// (node, timeout) pairs).
	odd map[drivers.GlobalID]uint32
	n   int
}

// doneKey is one ended gtrid: its begin time in milliseconds and the index
// of its (node, deadline - begin) pair packed into hi:lo (beginMs<<20 |
// tag), its sequence number, and the log sequence number of its first
// record (the order Entries lists it in; it wraps after 4e9 records between
// two compactions, which only reorders that listing).
type doneKey struct {
	hi, lo uint32
	seq    uint32
	first  uint32
}

// doneTag is what a doneKey's tag index stands for.
type doneTag struct {
	node string
	dl   int64 // deadline - begin, in milliseconds
}

const (
	doneTailMax = 64
	doneRunMax  = 1 << 16
	doneTagBits = 20
)

func compareDone(a, b doneKey) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// pack returns g's key; ok is false when g does not fit one (it goes to odd).
func (s *doneSet) pack(g drivers.GlobalID, first uint64, add bool) (doneKey, bool) {
	begin := g.Begin().UnixMilli()
	dl := g.Deadline().UnixMilli() - begin
	if begin < 0 || begin >= 1<<(64-doneTagBits) || !g.Begin().Equal(time.UnixMilli(begin)) || !g.Deadline().Equal(time.UnixMilli(begin+dl)) {
		return doneKey{}, false
	}
	tag := doneTag{g.Node(), dl}
	idx, ok := s.tagIdx[tag]
	if !ok {
		if !add || len(s.tags) >= 1<<doneTagBits {
			return doneKey{}, false
		}
		if s.tagIdx == nil {
			s.tagIdx = map[doneTag]uint32{}
		}
		idx = uint32(len(s.tags))
		s.tags = append(s.tags, tag)
		s.tagIdx[tag] = idx
	}
	v := uint64(begin)<<doneTagBits | uint64(idx)
	return doneKey{hi: uint32(v >> 32), lo: uint32(v), seq: g.Seq(), first: uint32(first)}, true
}

func (s *doneSet) unpack(k doneKey) drivers.GlobalID {
	v := uint64(k.hi)<<32 | uint64(k.lo)
	begin := int64(v >> doneTagBits)
	tag := s.tags[v&(1<<doneTagBits-1)]
	return drivers.MustGlobalID(tag.node, time.UnixMilli(begin).UTC(), k.seq, time.UnixMilli(begin+tag.dl).UTC())
}

// add records g as done; first is the log sequence number of its first
// record. Adding a gtrid twice is the caller's bug (an entry ends once).
func (s *doneSet) add(g drivers.GlobalID, first uint64) {
	s.n++
	k, ok := s.pack(g, first, true)
	if !ok {
		if s.odd == nil {
			s.odd = map[drivers.GlobalID]uint32{}
		}
		s.odd[g] = uint32(first)
		return
	}
	s.tail = append(s.tail, k)
	if len(s.tail) >= doneTailMax {
		s.flush()
	}
}

// flush turns the tail into a run.
func (s *doneSet) flush() {
	if len(s.tail) == 0 {
		return
	}
	slices.SortFunc(s.tail, compareDone)
	if n := len(s.runs); n > 0 && len(s.runs[n-1])+len(s.tail) <= doneRunMax && compareDone(s.runs[n-1][len(s.runs[n-1])-1], s.tail[0]) < 0 {
		if cap(s.runs[n-1]) < len(s.runs[n-1])+len(s.tail) {
			// Grow to the run's full size at once when it has grown
			// past a few tails: a run in order ends up full.
			grown := make([]doneKey, len(s.runs[n-1]), min(doneRunMax, max(4*doneTailMax, 2*cap(s.runs[n-1]))))
			copy(grown, s.runs[n-1])
			s.runs[n-1] = grown
		}
		s.runs[n-1] = append(s.runs[n-1], s.tail...)
		s.tail = s.tail[:0]
		return
	}
	s.runs = append(s.runs, slices.Clone(s.tail))
	s.tail = s.tail[:0]
	for n := len(s.runs); n >= 2 && len(s.runs[n-2]) <= 2*len(s.runs[n-1]) && len(s.runs[n-2])+len(s.runs[n-1]) <= 2*doneRunMax; n = len(s.runs) {
		s.runs[n-2] = mergeDone(s.runs[n-2], s.runs[n-1])
		s.runs = s.runs[:n-1]
	}
}

func mergeDone(a, b []doneKey) []doneKey {
	out := make([]doneKey, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if compareDone(a[0], b[0]) <= 0 {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
}

// has reports whether g is done.
func (s *doneSet) has(g drivers.GlobalID) bool {
	_, ok := s.lookup(g)
	return ok
}

// lookup returns the first-record sequence number of a done g.
func (s *doneSet) lookup(g drivers.GlobalID) (uint32, bool) {
	if s.n == 0 {
		return 0, false
	}
	k, ok := s.pack(g, 0, false)
	if !ok {
		first, ok := s.odd[g]
		return first, ok
	}
	for _, t := range s.tail {
		if compareDone(t, k) == 0 {
			return t.first, true
		}
	}
	for _, r := range s.runs {
		if compareDone(k, r[0]) < 0 || compareDone(k, r[len(r)-1]) > 0 {
			continue
		}
		if i, ok := slices.BinarySearchFunc(r, k, compareDone); ok {
			return r[i].first, true
		}
	}
	return 0, false
}

// len returns how many transactions are done.
func (s *doneSet) len() int { return s.n }

// each calls f for every done gtrid, in no particular order.
func (s *doneSet) each(f func(g drivers.GlobalID, first uint32)) {
	for _, r := range s.runs {
		for _, k := range r {
			f(s.unpack(k), k.first)
		}
	}
	for _, k := range s.tail {
		f(s.unpack(k), k.first)
	}
	for g, first := range s.odd {
		f(g, first)
	}
}

// doneEntry is the Entry of a transaction in the done set.
func doneEntry(g drivers.GlobalID) Entry {
	return Entry{GTRID: g, State: StateDone, Decision: &Decision{GTRID: g}}
}
