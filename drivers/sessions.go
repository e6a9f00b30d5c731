package drivers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// SessionEnder is implemented by resources whose prepared branches cannot
// be finished from another session while the session that prepared them is
// still open (MariaDB answers XAER_NOTA until the owner disconnects or is
// killed). A paused coordinator keeps its sessions open, so a peer taking
// over its node could not finish its branches on such a resource until it
// resumed or died.
//
// A coordinator incarnation therefore marks every session it pins for a
// branch (MarkSessions, with SessionMark of its node and incarnation), and
// a claimant that holds the node's expired lease ends exactly the sessions
// carrying that mark (EndSessions): to the database that is the same as
// the dead process's connections dropping, which the protocol survives at
// every step. It is optional: a resource that does not implement it is not
// marked, and its branches of a paused peer wait for their owner.
type SessionEnder interface {
	// MarkSessions makes every session the resource pins for a branch
	// from now on carry mark (SessionMark), and sessions that carried an
	// earlier mark drop it when they are next pinned. "" stops marking.
	// An invalid mark is an error and changes nothing.
	MarkSessions(mark string) error
	// EndSessions ends every session of the server carrying mark, and
	// returns how many it ended once the server no longer lists them and
	// their prepared branches can be finished from another session. It
	// never ends a session without the mark. Sessions it may not see or
	// end (another database user's, without the privileges) make an
	// error; ended ones are counted anyway.
	EndSessions(ctx context.Context, mark string) (int, error)
}

// SessionMarkLen is the length of a session mark: lowercase hex digits.
const SessionMarkLen = 16

// SessionMark returns the mark of the sessions of one coordinator
// incarnation (SessionEnder): a hash of its node id and its incarnation id
// (the random id a lease holder records, e.g. pgstore.Holder.Incarnation),
// SessionMarkLen lowercase hex digits, so that it fits a server's short
// lock names and is safe in any SQL text.
func SessionMark(node, incarnation string) string {
	h := sha256.Sum256([]byte("xabridge-session\x00" + node + "\x00" + incarnation))
	return hex.EncodeToString(h[:SessionMarkLen/2])
}

// ValidateSessionMark checks that mark has SessionMark's shape.
func ValidateSessionMark(mark string) error {
	if len(mark) != SessionMarkLen {
		return fmt.Errorf("session mark %q: want %d hex digits", truncate(mark, 40), SessionMarkLen)
	}
	for i := 0; i < len(mark); i++ {
		c := mark[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("session mark %q: want lowercase hex digits only", truncate(mark, 40))
		}
	}
	return nil
}

// ErrSessionsNotEnded: EndSessions could not end every marked session
// (typically a privilege: ending another database user's session).
var ErrSessionsNotEnded = errors.New("marked sessions not ended")
