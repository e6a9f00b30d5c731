package recovery_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

// A service's coordinator at start-up: the file log's lock proves that the
// previous process with this node id is dead, so its undecided prepared
// branches (and their row locks) are rolled back at once, not after their
// fence; then the same recoverer keeps running next to the coordinator.
func ExampleRecoverer_PassSettled() {
	ctx := context.Background()
	var resources []drivers.Resource // the same resources as the coordinator's
	coord, err := xa.New(ctx, xa.Config{
		NodeID:    "payments-1",
		LogDir:    "/var/lib/xabridge/log", // New takes the log's lock
		Resources: resources,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer coord.Close()

	rec, err := recovery.New(recovery.Config{
		NodeID:    coord.NodeID(),
		Log:       coord.Log(),
		Resources: resources,
		Active:    coord.Active,
		// Every transaction of this node that began before the coordinator
		// started is a dead incarnation's: no fence wait for them.
		DeadBefore: coord.Started(),
	})
	if err != nil {
		log.Fatal(err)
	}
	reps := rec.PassSettled(ctx)
	log.Printf("start-up recovery: %d branches left in doubt", reps[len(reps)-1].Remaining())

	loopCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rec.Loop(loopCtx, 10*time.Second, nil)
	}()
	defer func() { stop(); <-done }()
	// ... serve ...
}

// The restart fast path with file logs, made safe against a second live
// process with the same node id (a log in another directory, which the
// log's own lock cannot see): take the node's lock in the participants
// first, refuse to start if another session holds it, and let DeadBefore
// apply only while every lock is held.
func ExampleLockNode() {
	ctx := context.Background()
	var resources []drivers.Resource // postgres and mysql resources implement drivers.NodeLocker
	locks, err := recovery.LockNode(ctx, "payments-1", resources, recovery.DefaultNodeLockWait, nil)
	if errors.Is(err, drivers.ErrNodeInUse) {
		log.Fatal(err) // "node id payments-1 is in use by another live coordinator (lock held by ...)"
	}
	defer locks.Close() // after the coordinator and its recovery
	coord, err := xa.New(ctx, xa.Config{NodeID: "payments-1", LogDir: "/var/lib/xabridge/log", Resources: resources})
	if err != nil {
		log.Fatal(err)
	}
	defer coord.Close()
	rec, err := recovery.New(recovery.Config{
		NodeID: coord.NodeID(), Log: coord.Log(), Resources: resources, Active: coord.Active,
		DeadBefore:      coord.Started(),
		DeadBeforeValid: locks.Held, // a participant unreachable, a lock lost: the fence rules
	})
	if err != nil {
		log.Fatal(err)
	}
	rec.PassSettled(ctx)
}
