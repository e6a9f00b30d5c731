package xa

import (
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// participant is how a decision names the branch num on res: by name and,
// when res can tell and has told already, by the database it reaches, so
// that recovery can refuse a resource name pointed at another database.
// It never waits for the identity (branches hold pool connections now);
// New and Enlist start reading it, so only decisions made before a
// resource first answered go without, and they are treated as decisions
// written before identities were recorded.
func participant(res drivers.Resource, num int) decisionlog.Participant {
	p := decisionlog.Participant{Resource: res.Name(), Branch: uint8(num)}
	if idr, ok := res.(drivers.Identifier); ok {
		if id, ok := idr.CachedIdentity(); ok {
			p.ID = id.String()
		}
	}
	return p
}
