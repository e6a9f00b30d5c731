package xa

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// idGen makes global ids for one coordinator node: time-ordered (begin time
// in milliseconds, never going backwards within a process) and unique (a
// sequence number that starts at a random value in each process, so a
// restart within the same millisecond cannot repeat an id).
type idGen struct {
	node string

	mu     sync.Mutex
	lastMs int64
	seq    uint32
}

func newIDGen(node string) *idGen {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux; a zero start is still correct
	return &idGen{node: node, seq: binary.LittleEndian.Uint32(b[:])}
}

// next returns a new global id that begins at now and whose fence deadline
// is now+ttl. It fails only for a clock or ttl beyond what a GlobalID holds.
func (g *idGen) next(now time.Time, ttl time.Duration) (drivers.GlobalID, error) {
	g.mu.Lock()
	ms := now.UnixMilli()
	if ms < g.lastMs {
		ms = g.lastMs // the wall clock stepped back; keep ids ordered
	}
	g.lastMs = ms
	g.seq++
	seq := g.seq
	g.mu.Unlock()
	begin := time.UnixMilli(ms).UTC()
	return drivers.NewGlobalID(g.node, begin, seq, begin.Add(ttl))
}
