package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
)

// endSessionsTimeout bounds ending a dead incarnation's sessions in one
// takeover.
const endSessionsTimeout = 10 * time.Second

// sessionEnders returns the resources of resources that can mark and end
// sessions (drivers.SessionEnder).
func sessionEnders(resources []drivers.Resource) []drivers.Resource {
	var out []drivers.Resource
	for _, r := range resources {
		if _, ok := r.(drivers.SessionEnder); ok {
			out = append(out, r)
		}
	}
	return out
}

// marking records which open replica marks each resource: a resource
// carries one mark, so two replicas of one process sharing a resource would
// make one's sessions carry the other's mark, and a takeover of the one
// would end the other's live sessions.
var marking struct {
	sync.Mutex
	by map[drivers.Resource]string // resource → node of the replica marking it
}

// markSessions marks the branch sessions of this incarnation (node, and
// the store's incarnation id) on every resource that can, so that a peer
// taking over the node while this process is paused can end them
// (endSessions). A resource another open replica of this process marks is
// refused: give each replica its own resources (pools).
func markSessions(node string, resources []drivers.Resource, mark string) error {
	enders := sessionEnders(resources)
	marking.Lock()
	defer marking.Unlock()
	if marking.by == nil {
		marking.by = map[drivers.Resource]string{}
	}
	for _, r := range enders {
		if other, ok := marking.by[r]; ok && other != node {
			return fmt.Errorf("resource %s is used by the replica of node %s in this process too: give each replica its own resources (their sessions carry its mark)", r.Name(), other)
		}
	}
	for _, r := range enders {
		if err := r.(drivers.SessionEnder).MarkSessions(mark); err != nil {
			return fmt.Errorf("marking the sessions of %s: %w", r.Name(), err)
		}
		marking.by[r] = node
	}
	return nil
}

// unmarkSessions stops marking sessions on resources (Close): they may
// outlive this incarnation, e.g. for another Open in this process.
func unmarkSessions(node string, resources []drivers.Resource) error {
	var err error
	marking.Lock()
	defer marking.Unlock()
	for _, r := range sessionEnders(resources) {
		if marking.by[r] != node {
			continue
		}
		delete(marking.by, r)
		err = errors.Join(err, r.(drivers.SessionEnder).MarkSessions(""))
	}
	return err
}

// endSessions ends, on every resource that can, the sessions of the
// node's incarnations (lease holders' incarnation ids): a paused or cut-off
// process keeps its MariaDB sessions open, and MariaDB refuses to finish a
// prepared branch from another session until its own is gone. It runs only
// while st holds the claim on node, checked right before each resource:
// then no incarnation of the node holds its lease, none can decide, and
// ending its sessions is what its death would do to the databases. (A
// claimant stalled between that check and the KILL for longer than the
// claim's margin could drop a connection of the node's process after it
// took its lease back: a lost connection, which the protocol survives.)
// Failures are logged: the takeover's passes then find the branches busy
// and leave them to a later one, as without this.
func endSessions(ctx context.Context, st *pgstore.Store, node string, resources []drivers.Resource, incarnations []string, logger *slog.Logger) {
	enders := sessionEnders(resources)
	if len(enders) == 0 {
		return
	}
	// Bounded: a killed session the server is slow to let go of must not
	// hold up the takeover's passes (and this replica's next ones).
	ctx, cancel := context.WithTimeout(ctx, endSessionsTimeout)
	defer cancel()
	seen := map[string]bool{}
	for _, inc := range incarnations {
		if inc == "" || seen[inc] {
			continue
		}
		seen[inc] = true
		mark := drivers.SessionMark(node, inc)
		for _, r := range enders {
			if err := st.Holds(node); err != nil {
				logger.Warn("claim lost before ending the node's sessions", "err", err)
				return
			}
			n, err := r.(drivers.SessionEnder).EndSessions(ctx, mark)
			if err != nil {
				logger.Warn("ending the sessions of the node's dead incarnation failed: its branches there wait for it", "resource", r.Name(), "incarnation", inc, "ended", n, "err", err)
				continue
			}
			if n > 0 {
				logger.Info("ended the sessions of the node's dead incarnation", "resource", r.Name(), "incarnation", inc, "sessions", n)
			}
		}
	}
}
