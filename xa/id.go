package xa

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// idGen makes global ids for one coordinator node: time-ordered (begin time
// in milliseconds, never going backwards within a process, and never before
// the generator's start) and unique (a sequence number that starts at a
// random value in each process, so a restart within the same millisecond
// cannot repeat an id).
//
// Because no id begins before start, "an id of this node that begins before
// start" is positively not this coordinator's: with one live process per
// node id (the log lock or the node lease), it is an earlier incarnation's,
// which recovery may roll back without waiting for its fence
// (recovery.Config.DeadBefore).
type idGen struct {
	node  string
	start int64 // Unix milliseconds: no id begins before it

	mu     sync.Mutex
	lastMs int64
	seq    uint32
}

// newIDGen returns the id generator of node for a coordinator started at
// start (truncated to the millisecond, the precision of a GlobalID).
func newIDGen(node string, start time.Time) *idGen {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux; a zero start is still correct
	ms := start.UnixMilli()
	return &idGen{node: node, start: ms, lastMs: ms, seq: binary.LittleEndian.Uint32(b[:])}
}

// started returns the generator's start: every id it makes begins at or
// after it.
func (g *idGen) started() time.Time { return time.UnixMilli(g.start).UTC() }

// next returns a new global id that begins at now and whose fence deadline
// is now+ttl. It fails only for a clock or ttl beyond what a GlobalID holds.
func (g *idGen) next(now time.Time, ttl time.Duration) (drivers.GlobalID, error) {
	g.mu.Lock()
	ms := now.UnixMilli()
	if ms < g.lastMs {
		// The wall clock stepped back (since the last id, or since the
		// start): keep ids ordered, and never begin before the start.
		ms = g.lastMs
	}
	g.lastMs = ms
	g.seq++
	seq := g.seq
	g.mu.Unlock()
	begin := time.UnixMilli(ms).UTC()
	return drivers.NewGlobalID(g.node, begin, seq, begin.Add(ttl))
}
