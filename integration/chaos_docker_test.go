package integration

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/crashcheck"
	"github.com/xabridge/xabridge/internal/dbproc"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/dbtest/containers"
	"github.com/xabridge/xabridge/internal/netfault"
	"github.com/xabridge/xabridge/xa"
)

// The Docker-level faults: the same scenarios and invariants as the chaos
// matrix, on a PostgreSQL and a MariaDB container alone on a private Docker
// network (internal/dbtest/containers.StartSet), reached at their addresses
// on it. A crash is `docker kill` (SIGKILL of the server, the container's
// PID 1) and `docker start`; a frozen server is `docker pause`; a partition
// is `docker network disconnect` (the coordinator's packets go nowhere, no
// proxy involved).
//
// They run where the containers are the test databases: XABRIDGE_TEST_DB=
// containers (scripts/test's container leg; no Docker then fails), or the
// default "auto" mode when a Docker engine answers. XABRIDGE_TEST_DB=local,
// or auto mode on a machine without Docker, skips them, saying so.

// servers is what the chaos scenarios need of their private database
// servers: local processes (*dbproc.Pair) or containers (dockerPair).
type servers interface {
	PGURL() string
	MyURL() string
	Addr(dbproc.Server) string
	// Kill9 crashes the server (SIGKILL); StartServer brings it back on
	// its data and waits until it answers.
	Kill9(context.Context, dbproc.Server) error
	StartServer(context.Context, dbproc.Server) error
	Stop(context.Context) error
}

// dockerPair is a containers.Set as the chaos scenarios' servers.
type dockerPair struct{ set *containers.Set }

func (p dockerPair) db(s dbproc.Server) *containers.DB {
	if s == dbproc.PG {
		return p.set.PG
	}
	return p.set.My
}

func (p dockerPair) PGURL() string                  { return p.set.PG.URL }
func (p dockerPair) MyURL() string                  { return p.set.My.URL }
func (p dockerPair) Addr(s dbproc.Server) string    { return p.db(s).Addr }
func (p dockerPair) Stop(ctx context.Context) error { return p.set.Terminate(ctx) }

// Kill9 is `docker kill`.
func (p dockerPair) Kill9(ctx context.Context, s dbproc.Server) error { return p.db(s).Kill(ctx) }

// StartServer is `docker start`, then a wait until the server answers.
func (p dockerPair) StartServer(ctx context.Context, s dbproc.Server) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return p.db(s).Start(ctx)
}

var (
	dockerEnvOnce sync.Once
	dockerEnv     *chaosEnv
	dockerEnvErr  error
)

// getDockerEnv starts the containers of the Docker chaos tests, once per
// test binary, or skips the test where they do not run (see above).
func getDockerEnv(t *testing.T) *chaosEnv {
	t.Helper()
	switch mode := dbtest.Mode(); {
	case mode == "local":
		t.Skip("XABRIDGE_TEST_DB=local: the Docker fault tests run in the container leg")
	case mode == "containers":
		if !dbtest.DockerReachable() {
			t.Fatal("XABRIDGE_TEST_DB=containers, but no Docker engine answers")
		}
	case !dbtest.DockerReachable():
		t.Skip("no Docker engine answers: the Docker fault tests need one (XABRIDGE_TEST_DB=containers makes that a failure)")
	}
	dockerEnvOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		set, err := containers.StartSet(ctx)
		if err != nil {
			dockerEnvErr = err
			return
		}
		dockerEnv = &chaosEnv{pair: dockerPair{set}}
		dockerEnvErr = dockerEnv.setup(ctx)
	})
	if dockerEnvErr != nil {
		t.Fatalf("docker chaos environment: %v", dockerEnvErr)
	}
	return dockerEnv
}

// TestDockerChaosKill is the server crash matrix with `docker kill` of the
// database container instead of SIGKILL of a local process.
func TestDockerChaosKill(t *testing.T) { serverCrash(t, getDockerEnv(t), "docker kill") }

// startDirectRun is startNetRun without proxies: the coordinator talks to
// the servers directly. fault, when set, is called once, by the first
// transaction whose commit decision is durable, before its phase 2; the
// transaction waits for it.
func (e *chaosEnv) startDirectRun(t *testing.T, timeout time.Duration, fault func(victim drivers.GlobalID)) *netRun {
	t.Helper()
	s := e.newScenario(t, 4)
	r := &netRun{t: t, s: s, proxies: map[dbproc.Server]*netfault.Proxy{}, journal: &syncWriter{w: &bytes.Buffer{}}, done: make(chan struct{})}
	ctx := context.Background()
	b, err := bank.Open(ctx, e.pair.PGURL(), e.pair.MyURL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix(s.prefix); err != nil {
		t.Fatal(err)
	}
	r.bank = b
	// The fault is armed once the workload has committed a few transfers.
	var armMu sync.Mutex
	var armed func(drivers.GlobalID)
	hook := func(step xa.Step, info xa.StepInfo) {
		if step != xa.StepDecided {
			return
		}
		armMu.Lock()
		f := armed
		armed = nil
		armMu.Unlock()
		if f != nil {
			f(info.GTRID)
		}
	}
	r.coord, err = xa.New(ctx, xa.Config{
		NodeID: s.node, LogDir: s.logDir, Resources: []drivers.Resource{b.PG, b.My},
		Timeout: timeout, Phase2Timeout: time.Second, RollbackTimeout: time.Second, Hook: hook,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.w = &crashcheck.Workload{Bank: b, Coord: r.coord, Order: crashcheck.Mixed, Workers: 2, Accounts: chaosAccounts, Seed: 11,
		Journal: crashcheck.NewJournalWriter(r.journal)}
	wctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.w.Run(wctx)
	}()
	r.waitCommits(3, "before the fault")
	armMu.Lock()
	armed = fault
	armMu.Unlock()
	return r
}

// TestDockerChaosFrozenServer freezes a database with `docker pause`:
//   - while transactions work (a slow participant: nothing answers within
//     the transaction timeout): they abort, whole, and once the server is
//     thawed transfers commit again;
//   - right after a commit decision, before phase 2: the caller is told
//     "commit pending" (never "aborted"), and after `docker unpause` the
//     transfer ends committed on both sides.
//
// (The lost-lease case, a coordinator cut off past its lease, is
// TestDockerCoordinatorsHA's network disconnect.)
func TestDockerChaosFrozenServer(t *testing.T) {
	e := getDockerEnv(t)
	ctx := context.Background()
	for _, srv := range []dbproc.Server{dbproc.PG, dbproc.My} {
		engine := map[dbproc.Server]string{dbproc.PG: "postgres", dbproc.My: "mariadb"}[srv]
		db := e.pair.(dockerPair).db(srv)
		t.Run(engine+"/paused-during-work", func(t *testing.T) {
			r := e.startDirectRun(t, time.Second, nil)
			aborted := r.w.Progress().Aborted.Load()
			if err := db.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			if !poll(60*time.Second, func() bool { return r.w.Progress().Aborted.Load() >= aborted+3 }) {
				_ = db.Unpause(ctx)
				t.Fatalf("no transfer timed out against a paused %s (%s)", engine, r.w.Progress())
			}
			if err := db.Unpause(ctx); err != nil {
				t.Fatal(err)
			}
			r.waitCommits(3, "after docker unpause")
			j, res := r.finish()
			results.add("docker pause during work (frozen server)", engine, 0, len(j), res)
		})
		t.Run(engine+"/paused-after-decision", func(t *testing.T) {
			victim := make(chan string, 1)
			r := e.startDirectRun(t, 5*time.Second, func(id drivers.GlobalID) {
				if err := db.Pause(ctx); err != nil {
					t.Errorf("docker pause: %v", err)
				}
				victim <- id.String()
			})
			id := r.victim(victim)
			if o := r.outcome(id); o != crashcheck.Pending {
				t.Errorf("transfer %s whose %s froze after the decision was reported %q, want commit pending", id, engine, o)
			}
			if err := db.Unpause(ctx); err != nil {
				t.Fatal(err)
			}
			r.waitCommits(3, "after docker unpause")
			j, res := r.finish()
			r.s.wantPresent(id, true)
			results.add("docker pause after the decision (frozen in phase 2)", engine, 0, len(j), res)
		})
	}
}

// TestDockerChaosPartition cuts a database off the coordinator with `docker
// network disconnect` (a real partition: the server runs on, its address
// answers nothing) and heals it with `docker network connect`:
//   - during the work: transactions abort, whole, and commit again once
//     healed;
//   - right after a commit decision, before phase 2: "commit pending", and
//     once healed the transfer ends committed on both sides.
func TestDockerChaosPartition(t *testing.T) {
	e := getDockerEnv(t)
	ctx := context.Background()
	for _, srv := range []dbproc.Server{dbproc.PG, dbproc.My} {
		engine := map[dbproc.Server]string{dbproc.PG: "postgres", dbproc.My: "mariadb"}[srv]
		db := e.pair.(dockerPair).db(srv)
		t.Run(engine+"/partition-during-work", func(t *testing.T) {
			r := e.startDirectRun(t, 2*time.Second, nil)
			aborted := r.w.Progress().Aborted.Load()
			if err := db.Disconnect(ctx); err != nil {
				t.Fatal(err)
			}
			if !poll(60*time.Second, func() bool { return r.w.Progress().Aborted.Load() >= aborted+2 }) {
				_ = db.Connect(ctx)
				t.Fatalf("no transfer aborted while %s was disconnected (%s)", engine, r.w.Progress())
			}
			if err := db.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			r.waitCommits(3, "after docker network connect")
			j, res := r.finish()
			results.add("docker network disconnect during work", engine, 1, len(j), res)
		})
		t.Run(engine+"/partition-after-decision", func(t *testing.T) {
			victim := make(chan string, 1)
			r := e.startDirectRun(t, 5*time.Second, func(id drivers.GlobalID) {
				if err := db.Disconnect(ctx); err != nil {
					t.Errorf("docker network disconnect: %v", err)
				}
				victim <- id.String()
			})
			id := r.victim(victim)
			if o := r.outcome(id); o != crashcheck.Pending {
				t.Errorf("transfer %s cut off from %s after the decision was reported %q, want commit pending", id, engine, o)
			}
			if err := db.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			r.waitCommits(3, "after docker network connect")
			j, res := r.finish()
			r.s.wantPresent(id, true)
			results.add("docker network disconnect after the decision", engine, 1, len(j), res)
		})
	}
}

// victim waits for the fault of startDirectRun to fire and returns the
// transfer it hit.
func (r *netRun) victim(ch <-chan string) string {
	r.t.Helper()
	select {
	case id := <-ch:
		return id
	case <-time.After(60 * time.Second):
		r.t.Fatalf("no transaction reached its commit decision within 60s (%s)", r.w.Progress())
		return ""
	}
}

// The Docker chaos environment's servers are containers.
var _ servers = dockerPair{}

func (p dockerPair) String() string { return fmt.Sprintf("containers on %s", p.set.Network) }
