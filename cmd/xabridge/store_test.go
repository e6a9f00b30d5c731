package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
)

// storeScene is a shared decision store of the test's own (a fresh schema
// in the test PostgreSQL, dropped afterwards) and a bank table to prepare
// branches on.
type storeScene struct {
	pgURL, myURL string
	schema       string
	pool         *pgxpool.Pool // the test's own connection to the store's database
	b            *bank.Bank
	table        string
	xids         []drivers.XID // prepared by the test; rolled back at cleanup if left
}

func newStoreScene(t *testing.T) *storeScene {
	t.Helper()
	ctx := context.Background()
	s := &storeScene{pgURL: dbtest.PG(t), myURL: dbtest.MySQL(t), schema: "xbc_" + randHex(5)}
	pool, err := pgxpool.New(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	s.pool = pool
	b, err := bank.Open(ctx, s.pgURL, s.myURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	s.b = b
	if err := b.SetPrefix("xab_cs_" + randHex(3)); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 10, 100); err != nil {
		t.Fatal(err)
	}
	s.table = b.Table("accounts")
	t.Cleanup(func() {
		for _, x := range s.xids {
			for _, r := range []drivers.Resource{b.PG, b.My} {
				for i := 0; i < 100; i++ {
					if err := r.RollbackPrepared(ctx, x); !errors.Is(err, drivers.ErrBusy) {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}
		_ = b.Drop(ctx)
		b.Close()
		_, _ = pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+s.schema+" CASCADE")
		pool.Close()
	})
	return s
}

// flags are the store flags of the scene.
func (s *storeScene) flags(extra ...string) []string {
	return append([]string{"--store", s.pgURL, "--store-schema", s.schema}, extra...)
}

// resources are the scene's databases as --resource flags.
func (s *storeScene) resources() []string {
	return []string{"--resource", "pg=" + s.pgURL, "--resource", "mysql=" + s.myURL}
}

// open opens a store on node with ttl, closed (its lease released) after
// the test.
func (s *storeScene) open(t *testing.T, node string, ttl time.Duration) *pgstore.Store {
	t.Helper()
	st, err := pgstore.Open(context.Background(), s.pool, pgstore.Options{Node: node, Schema: s.schema, LeaseTTL: ttl})
	if err != nil {
		t.Fatalf("open store as %s: %v", node, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// abandon opens a store on node with a 1s lease, lets it write (before),
// then cuts its connection, as if its process had been partitioned away or
// had died: it stops renewing, and the lease expires by the database's
// clock. It returns once the store says the node expired.
func (s *storeScene) abandon(t *testing.T, node string, before func(*pgstore.Store)) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := pgstore.Open(ctx, pool, pgstore.Options{Node: node, Schema: s.schema, LeaseTTL: time.Second, SweepEvery: -1})
	if err != nil {
		pool.Close()
		t.Fatalf("open store as %s: %v", node, err)
	}
	if before != nil {
		before(st)
	}
	pool.Close() // no renewal can reach the database any more
	t.Cleanup(func() { _ = st.Close() })
	s.waitState(t, node, pgstore.NodeExpired)
}

// node reads one node's lease as the store holds it.
func (s *storeScene) node(t *testing.T, node string) pgstore.NodeInfo {
	t.Helper()
	rd, err := pgstore.OpenReader(context.Background(), s.pool, pgstore.ReaderOptions{Schema: s.schema})
	if err != nil {
		t.Fatal(err)
	}
	ni, err := rd.NodeInfo(context.Background(), node)
	if err != nil {
		t.Fatalf("node %s: %v", node, err)
	}
	return ni
}

// waitState polls the store until node is in state (10s at most).
func (s *storeScene) waitState(t *testing.T, node string, state pgstore.NodeState) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ni := s.node(t, node)
		if ni.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s is %s after 10s, want %s", node, ni.State, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prepare leaves a branch of g prepared on r (pg: branch 0, mysql: 1).
func (s *storeScene) prepare(t *testing.T, g drivers.GlobalID, onPG, onMy bool, account int) {
	t.Helper()
	ctx := context.Background()
	upd := "UPDATE " + s.table + " SET balance = balance + 1 WHERE id = " + strconv.Itoa(account)
	if onPG {
		x := drivers.XID{Global: g, Branch: 0}
		s.xids = append(s.xids, x)
		if err := strand.Prepare(ctx, s.b.PG, x, upd); err != nil {
			t.Fatal(err)
		}
	}
	if onMy {
		x := drivers.XID{Global: g, Branch: 1}
		s.xids = append(s.xids, x)
		if err := strand.Prepare(ctx, s.b.My, x, upd); err != nil {
			t.Fatal(err)
		}
	}
}

// prepared counts g's branches still prepared on both databases.
func (s *storeScene) prepared(t *testing.T, g drivers.GlobalID) int {
	t.Helper()
	n := 0
	for _, r := range []drivers.Resource{s.b.PG, s.b.My} {
		ps, err := r.Recover(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Ours && p.XID.Global == g {
				n++
			}
		}
	}
	return n
}

// participants are g's two branches with the resources' identities.
func (s *storeScene) participants(t *testing.T) []decisionlog.Participant {
	t.Helper()
	ctx := context.Background()
	pgID, err := s.b.PG.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	myID, err := s.b.My.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return []decisionlog.Participant{{Resource: "pg", Branch: 0, ID: pgID.String()}, {Resource: "mysql", Branch: 1, ID: myID.String()}}
}

// schemaExists reports whether the PostgreSQL schema exists.
func schemaExists(t *testing.T, pool *pgxpool.Pool, schema string) bool {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// Every malformed, conflicting or unusable --store is refused with a
// message naming the problem and the right exit code; nothing is created
// and no password is shown.
func TestStoreBadInput(t *testing.T) {
	pg := dbtest.PG(t)
	pool, err := pgxpool.New(context.Background(), pg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	logDir := newLogDir(t)
	withPW := func(u string) string {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		p.User = url.UserPassword("u", plainPW)
		return p.String()
	}
	empty := "xbc_" + randHex(5) // a schema that does not exist: no store there
	unreachable := "postgres://u:" + plainPW + "@127.0.0.1:1/x"
	gtrid := "nd-x.01a22424f646.3ce3b1c7.01a224256b76"
	res := []string{"--resource", "pg=" + pg}
	store := []string{"--store", pg, "--store-schema", empty}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"store and log-dir flags", nil, append([]string{"list", "--store", pg, "--log-dir", logDir}, res...), exitUsage, "--store and --log-dir exclude each other"},
		{"store and log-dir in env", map[string]string{"XABRIDGE_STORE": pg, "XABRIDGE_LOG_DIR": logDir}, append([]string{"list"}, res...), exitUsage, "exclude each other"},
		{"demo: store and log-dir", nil, []string{"demo", "transfer", "--store", pg, "--log-dir", logDir, "--pg", pg, "--mysql", pg}, exitUsage, "exclude each other"},
		{"empty store", nil, append([]string{"list", "--store", ""}, res...), exitUsage, "--store is empty"},
		{"not postgres", nil, append([]string{"list", "--store", "mysql://u:" + plainPW + "@127.0.0.1:1/x"}, res...), exitUsage, "is a PostgreSQL database"},
		{"not a url", nil, append([]string{"nodes", "--store", "host=127.0.0.1 password=" + plainPW}, res...), exitUsage, "want a PostgreSQL URL"},
		{"bad port", nil, append([]string{"show", gtrid, "--store", "postgres://u:" + plainPW + "@127.0.0.1:port/x"}, res...), exitUsage, "not a valid"},
		{"bad sslmode", nil, append([]string{"recover", "--store", "postgres://u:" + plainPW + "@127.0.0.1/x?sslmode=maybe"}, res...), exitUsage, "not a valid PostgreSQL URL"},
		{"ambiguous password", nil, append([]string{"list", "--store", "postgres://u:Qz9@x:/#Sekr@127.0.0.1/x"}, res...), exitUsage, "percent-encode"},
		{"bad schema", nil, append([]string{"list", "--store", pg, "--store-schema", "Robert'); DROP"}, res...), exitUsage, "--store-schema"},
		{"schema without store", nil, append([]string{"list", "--store-schema", "abc", "--log-dir", logDir}, res...), exitUsage, "without --store"},
		{"unreachable", nil, append([]string{"list", "--store", unreachable}, res...), exitError, "store unreachable"},
		{"unreachable nodes", nil, []string{"nodes", "--store", unreachable}, exitError, "store unreachable"},
		{"wrong password", nil, []string{"nodes", "--store", withPW(pg)}, exitError, "store unreachable"},
		{"no store: list", nil, append(append([]string{"list"}, store...), res...), exitError, "no xabridge store in database"},
		{"no store: show", nil, append(append([]string{"show", gtrid}, store...), res...), exitError, "no xabridge store in database"},
		{"no store: nodes", nil, append([]string{"nodes"}, store...), exitError, "no xabridge store in database"},
		{"no store: recover", nil, append(append([]string{"recover"}, store...), res...), exitError, "no xabridge store in database"},
		{"no store: recover dry-run", nil, append(append([]string{"recover", "--dry-run"}, store...), res...), exitError, "no xabridge store in database"},
		{"no store: resolve", nil, append(append([]string{"resolve", gtrid, "--rollback"}, store...), res...), exitError, "no xabridge store in database"},
		{"no store: log dump", nil, append([]string{"log", "dump"}, store...), exitError, "no xabridge store in database"},
		{"nodes without store", nil, []string{"nodes"}, exitUsage, "nodes needs --store"},
		{"log verify on a store", nil, append([]string{"log", "verify"}, store...), exitUsage, "works on a decision log file"},
		{"log repair on a store", nil, append([]string{"log", "repair"}, store...), exitUsage, "works on a decision log file"},
		{"log compact on a store", nil, append([]string{"log", "compact"}, store...), exitUsage, "works on a decision log file"},
		{"log stats on a store", map[string]string{"XABRIDGE_STORE": pg}, []string{"log", "stats"}, exitUsage, "works on a decision log file"},
		{"log dump --node without store", nil, []string{"log", "dump", "--node", "a", "--log-dir", logDir}, exitUsage, "--node goes with --store"},
		{"recover --watch", nil, append(append([]string{"recover", "--watch"}, store...), res...), exitUsage, "--watch does not go with --store"},
		{"recover --min-age", nil, append(append([]string{"recover", "--min-age", "0s"}, store...), res...), exitUsage, "--min-age does not go with --store"},
		{"resolve other node", nil, append(append([]string{"resolve", gtrid, "--rollback", "--node-id", "other"}, store...), res...), exitUsage, "not of --node-id other"},
		{"demo lease-ttl without store", nil, []string{"demo", "transfer", "--lease-ttl", "1s", "--pg", pg, "--mysql", pg, "--log-dir", logDir}, exitUsage, "--lease-ttl goes with --store"},
		{"demo not postgres", nil, []string{"demo", "transfer", "--store", "mysql://u:" + plainPW + "@h/x", "--pg", pg, "--mysql", pg}, exitUsage, "is a PostgreSQL database"},
		{"config file conflict", map[string]string{"XABRIDGE_CONFIG": writeConfig(t, `{"store": "`+pg+`", "log_dir": "`+logDir+`"}`)}, append([]string{"list"}, res...), exitUsage, "in the config file"},
	}
	t.Chdir(t.TempDir())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"XABRIDGE_STORE", "XABRIDGE_STORE_SCHEMA", "XABRIDGE_LOG_DIR", "XABRIDGE_CONFIG"} {
				t.Setenv(k, "")
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			out, errOut, code := cli(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", code, tt.code, tt.want, out, errOut)
			}
			if p := leaks(out + errOut); p != "" {
				t.Errorf("shows %q:\n%s%s", p, out, errOut)
			}
		})
	}
	if schemaExists(t, pool, empty) {
		t.Errorf("a refused command created schema %s", empty)
	}
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := t.TempDir() + "/config.json"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// nodesOut runs xabridge nodes -o json and decodes it.
func nodesOut(t *testing.T, args ...string) (nodesJSON, int, string) {
	t.Helper()
	out, errOut, code := cli(t, append([]string{"nodes", "-o", "json"}, args...)...)
	var j nodesJSON
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("nodes -o json (exit %d): %v\n%s%s", code, err, out, errOut)
	}
	return j, code, errOut
}

func byNode(j nodesJSON) map[string]nodeJSON {
	m := map[string]nodeJSON{}
	for _, n := range j.Nodes {
		m[n.Node] = n
	}
	return m
}

// xabridge nodes shows live, expired and taken-over nodes, their holders
// and epochs, and counts each node's prepared branches when given the
// resources; it reads without a lease.
func TestNodes(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	live := s.open(t, "nd-live", 5*time.Second)
	s.abandon(t, "nd-dead", nil)
	s.abandon(t, "nd-gone", nil)
	peer := s.open(t, "nd-peer", 5*time.Second)
	if _, err := peer.Claim(ctx, "nd-gone"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XABRIDGE_PG", "")
	t.Setenv("XABRIDGE_MYSQL", "")
	t.Setenv("XABRIDGE_RESOURCES", "")

	j, code, errOut := nodesOut(t, s.flags()...)
	if code != exitOK || j.Scanned {
		t.Fatalf("nodes without resources: exit %d, scanned %v: %s", code, j.Scanned, errOut)
	}
	got := byNode(j)
	want := map[string]string{"nd-live": "live", "nd-dead": "expired", "nd-gone": "taken-over", "nd-peer": "live"}
	for n, st := range want {
		if got[n].State != st {
			t.Errorf("node %s: state %q, want %q (%+v)", n, got[n].State, st, got[n])
		}
		if got[n].InDoubtBranches != nil {
			t.Errorf("node %s: in-doubt counted without resources", n)
		}
	}
	if h := got["nd-gone"].Holder; h.Node != "nd-peer" || got["nd-gone"].Epoch != 2 {
		t.Errorf("nd-gone: holder %+v epoch %d, want nd-peer at epoch 2", h, got["nd-gone"].Epoch)
	}
	if n := got["nd-live"]; n.Holder.Node != "nd-live" || n.ExpiresInSeconds <= 0 || n.Epoch != live.Epoch() {
		t.Errorf("nd-live: %+v", n)
	}
	if got["nd-dead"].ExpiresInSeconds > 0 {
		t.Errorf("nd-dead expires in %v, want past", got["nd-dead"].ExpiresInSeconds)
	}
	out, _, code := cli(t, append([]string{"nodes"}, s.flags()...)...)
	for _, w := range []string{"nd-live", "live", "expired", "taken-over", "node nd-peer", "in-doubt branches not counted"} {
		if !strings.Contains(out, w) {
			t.Errorf("nodes table lacks %q (exit %d):\n%s", w, code, out)
		}
	}

	// The store from a config file, as the other options.
	cfg := writeConfig(t, `{"store": "`+s.pgURL+`", "store_schema": "`+s.schema+`"}`)
	if j, code, errOut := nodesOut(t, "--config", cfg); code != exitOK || len(j.Nodes) != len(want) {
		t.Errorf("nodes --config: exit %d, %d nodes: %s", code, len(j.Nodes), errOut)
	}

	// A prepared branch of the expired node: exit 3, counted; one of the
	// live node: counted, exit still 0 were it alone.
	now := time.Now()
	dead := strand.GlobalID("nd-dead", now.Add(-time.Minute), now.Add(time.Hour), 1)
	s.prepare(t, dead, true, false, 1)
	liveG := strand.GlobalID("nd-live", now.Add(-time.Minute), now.Add(time.Hour), 2)
	s.prepare(t, liveG, false, true, 2)
	j, code, errOut = nodesOut(t, append(s.flags(), s.resources()...)...)
	if code != exitInDoubt || !j.Scanned || j.Stranded != 1 {
		t.Fatalf("nodes with a stranded branch: exit %d, scanned %v, stranded %d: %s", code, j.Scanned, j.Stranded, errOut)
	}
	got = byNode(j)
	for n, c := range map[string]int{"nd-dead": 1, "nd-live": 1, "nd-gone": 0} {
		if got[n].InDoubtBranches == nil || *got[n].InDoubtBranches != c {
			t.Errorf("node %s: in-doubt %v, want %d", n, got[n].InDoubtBranches, c)
		}
	}
	// Read without a lease: nothing changed.
	if ni := s.node(t, "nd-live"); ni.Epoch != live.Epoch() || !sameHolder(ni.Holder, live.Holder()) {
		t.Errorf("nodes changed the live lease: %+v", ni)
	}
}

// list, show and log dump read a decision written through the store,
// without taking a lease.
func TestListShowStore(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	st := s.open(t, "ls-node", 5*time.Second)
	now := time.Now()
	g := strand.GlobalID("ls-node", now.Add(-time.Second), now.Add(time.Hour), 7)
	s.prepare(t, g, true, true, 3)
	if err := st.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: s.participants(t)}); err != nil {
		t.Fatal(err)
	}
	before := s.node(t, "ls-node")
	args := append(append(s.flags("--node-id", "ls-node"), s.resources()...), "-o", "json")

	out, errOut, code := cli(t, append([]string{"list"}, args...)...)
	if code != exitOK {
		t.Fatalf("list --store: exit %d\n%s%s", code, out, errOut)
	}
	var rep reportJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range rep.Branches {
		if b.GTRID == g.String() {
			n++
			if b.LogState != "committed" || b.Class != "commit-pending" {
				t.Errorf("list: branch %s: log %s class %s, want committed / commit-pending", b.XID, b.LogState, b.Class)
			}
		}
	}
	if n != 2 {
		t.Errorf("list shows %d branches of %s, want 2:\n%s", n, g, out)
	}

	// Without --node-id: every node of the store, each judged for itself.
	out, errOut, code = cli(t, append(append([]string{"list", "-o", "json"}, s.flags()...), s.resources()...)...)
	if code != exitOK {
		t.Fatalf("list --store (every node): exit %d\n%s%s", code, out, errOut)
	}
	var all reportJSON
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatal(err)
	}
	n = 0
	for _, b := range all.Branches {
		if b.GTRID == g.String() {
			n++
			if b.Class != "commit-pending" {
				t.Errorf("list (every node): branch %s: class %s, want commit-pending", b.XID, b.Class)
			}
		}
	}
	if n != 2 || all.Node != "*" {
		t.Errorf("list (every node) shows %d branches of %s (node %q), want 2:\n%s", n, g, all.Node, out)
	}

	out, errOut, code = cli(t, append([]string{"show", g.String()}, args...)...)
	if code != exitInDoubt { // its two branches are still prepared
		t.Fatalf("show --store: exit %d\n%s%s", code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Log == nil || rep.Log.State != "committed" || len(rep.Log.Participants) != 2 {
		t.Errorf("show: log %+v, want the commit decision with 2 participants", rep.Log)
	}

	out, errOut, code = cli(t, append([]string{"log", "dump", "--node", "ls-node", "-o", "json"}, s.flags()...)...)
	if code != exitOK || !strings.Contains(out, g.String()) || !strings.Contains(out, `"state": "committed"`) {
		t.Errorf("log dump --store: exit %d\n%s%s", code, out, errOut)
	}
	if after := s.node(t, "ls-node"); after.Epoch != before.Epoch || !sameHolder(after.Holder, before.Holder) {
		t.Errorf("reading took a lease: %+v -> %+v", before, after)
	}
	if s.prepared(t, g) != 2 {
		t.Errorf("reading changed the branches")
	}
}

// recover and resolve never act on a live node's (or a node being taken
// over's) transactions: refused, nothing changed.
func TestRecoverStoreRefusesLive(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	st := s.open(t, "rl-live", 5*time.Second)
	s.abandon(t, "rl-gone", nil)
	peer := s.open(t, "rl-peer", 5*time.Second)
	if _, err := peer.Claim(ctx, "rl-gone"); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	orphan := strand.GlobalID("rl-live", now.Add(-2*time.Hour), now.Add(-time.Hour), 1) // past its fence, no decision
	s.prepare(t, orphan, true, false, 4)
	before := s.node(t, "rl-live")
	base := append(s.flags(), s.resources()...)

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"recover the live node", []string{"recover", "--node-id", "rl-live"}, exitError, "node rl-live is live (held by"},
		{"recover dry-run the live node", []string{"recover", "--dry-run", "--node-id", "rl-live"}, exitError, "is live"},
		{"resolve on the live node", []string{"resolve", orphan.String(), "--rollback"}, exitError, "node rl-live is live (held by"},
		{"recover a node being taken over", []string{"recover", "--node-id", "rl-gone"}, exitError, "being taken over by node rl-peer"},
		{"recover an unknown node", []string{"recover", "--node-id", "rl-none"}, exitError, "has no lease in this store"},
		{"recover every expired node: none", []string{"recover"}, exitOK, "no expired node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := cli(t, append(tt.args, base...)...)
			if code != tt.code || !strings.Contains(out+errOut, tt.want) {
				t.Errorf("exit %d, want %d with %q\n%s%s", code, tt.code, tt.want, out, errOut)
			}
		})
	}
	if n := s.prepared(t, orphan); n != 1 {
		t.Errorf("the live node's branch was touched: %d prepared", n)
	}
	if _, found, err := st.LookupContext(ctx, orphan); err != nil || found {
		t.Errorf("an abort or action was recorded for the live node's transaction (found %v, %v)", found, err)
	}
	if after := s.node(t, "rl-live"); after.Epoch != before.Epoch || !sameHolder(after.Holder, before.Holder) {
		t.Errorf("the live lease changed: %+v -> %+v", before, after)
	}
	if ni := s.node(t, "rl-gone"); ni.Holder.Node != "rl-peer" || ni.State != pgstore.NodeTakenOver {
		t.Errorf("the claim of rl-gone changed: %+v", ni)
	}
}

// recover --store takes over an expired node: its commit decision is
// driven to completion, its undecided branch rolled back (the abort
// recorded first), within its fence, and the lease released; resolve acts
// on an expired node's transaction under a claim.
func TestRecoverStoreTakesOverExpired(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	now := time.Now()
	committed := strand.GlobalID("rx-dead", now.Add(-time.Second), now.Add(time.Hour), 1)
	undecided := strand.GlobalID("rx-dead", now.Add(-time.Second), now.Add(time.Hour), 2) // within its fence
	s.prepare(t, committed, true, true, 5)
	s.prepare(t, undecided, true, false, 6)
	s.abandon(t, "rx-dead", func(st *pgstore.Store) {
		if err := st.Commit(ctx, decisionlog.Decision{GTRID: committed, Participants: s.participants(t)}); err != nil {
			t.Fatal(err)
		}
	})
	other := strand.GlobalID("rx-other", now.Add(-time.Second), now.Add(time.Hour), 3)
	s.prepare(t, other, true, false, 7)
	s.abandon(t, "rx-other", nil)
	live := s.open(t, "rx-live", 5*time.Second)
	liveG := strand.GlobalID("rx-live", now.Add(-2*time.Hour), now.Add(-time.Hour), 4)
	s.prepare(t, liveG, false, true, 8)
	before := s.node(t, "rx-dead")
	base := append(s.flags(), s.resources()...)

	// resolve first: rx-other's undecided branch, rolled back under a claim.
	out, errOut, code := cli(t, append([]string{"resolve", other.String(), "--rollback"}, base...)...)
	if code != exitOK || s.prepared(t, other) != 0 {
		t.Fatalf("resolve on an expired node: exit %d, %d prepared\n%s%s", code, s.prepared(t, other), out, errOut)
	}
	if ni := s.node(t, "rx-other"); ni.State != pgstore.NodeExpired || ni.Holder.Node != operatorNode {
		t.Errorf("after resolve, rx-other: %+v, want expired (released by %s)", ni, operatorNode)
	}

	out, errOut, code = cli(t, append([]string{"recover", "--node-id", "rx-dead"}, base...)...)
	if code != exitOK {
		t.Fatalf("recover --store --node-id rx-dead: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "node rx-dead (expired, epoch 1) taken over") {
		t.Errorf("recover output:\n%s", out)
	}
	if n := s.prepared(t, committed) + s.prepared(t, undecided); n != 0 {
		t.Errorf("%d branch(es) of rx-dead still prepared", n)
	}
	rd, err := pgstore.OpenReader(ctx, s.pool, pgstore.ReaderOptions{Schema: s.schema})
	if err != nil {
		t.Fatal(err)
	}
	if e, _, err := rd.LookupContext(ctx, undecided); err != nil || e.State != decisionlog.StateAborted {
		t.Errorf("undecided: log %v (%v), want aborted (recorded before the rollback)", e.State, err)
	}
	if pend, err := rd.PendingContext(ctx, "rx-dead"); err != nil || len(pend) != 0 {
		t.Errorf("rx-dead's commit decision not ended: %v, %v", pend, err)
	}
	if pg, my, err := s.b.Balances(ctx, 5, 5); err != nil || pg != 101 || my != 101 {
		t.Errorf("the committed transfer: balances %d, %d (%v), want both 101", pg, my, err)
	}
	after := s.node(t, "rx-dead")
	if after.Epoch != before.Epoch+1 || after.State != pgstore.NodeExpired || after.Holder.Node != operatorNode {
		t.Errorf("rx-dead after recover: %+v; want epoch %d, released by %s", after, before.Epoch+1, operatorNode)
	}
	if s.prepared(t, liveG) != 1 || s.node(t, "rx-live").Epoch != live.Epoch() {
		t.Errorf("recover touched the live node")
	}

	// A node whose own process stopped cleanly, with nothing left.
	clean := s.open(t, "rx-clean", 5*time.Second)
	if err := clean.Close(); err != nil {
		t.Fatal(err)
	}
	cleanBefore := s.node(t, "rx-clean")

	// Again, every expired node: all were released with nothing left, so
	// none is claimed (a claim would cost each an epoch), exit 0.
	out, errOut, code = cli(t, append([]string{"recover"}, base...)...)
	if code != exitOK {
		t.Errorf("second recover: exit %d\n%s%s", code, out, errOut)
	}
	for _, n := range []string{"rx-dead", "rx-other", "rx-clean"} {
		if !strings.Contains(out, "node "+n+" (epoch ") || !strings.Contains(out, "not claimed") {
			t.Errorf("second recover does not say it left %s unclaimed:\n%s", n, out)
		}
	}
	if ni := s.node(t, "rx-dead"); ni.Epoch != after.Epoch {
		t.Errorf("rx-dead claimed again with nothing left: epoch %d, was %d", ni.Epoch, after.Epoch)
	}
	if ni := s.node(t, "rx-clean"); ni.Epoch != cleanBefore.Epoch || !ni.Released {
		t.Errorf("rx-clean after recover: %+v; want epoch %d, still released by itself", ni, cleanBefore.Epoch)
	}
}

// sameHolder compares two lease holders (Started is compared by the
// second: the database keeps microseconds, the process a monotonic clock).
func sameHolder(a, b pgstore.Holder) bool {
	return a.Node == b.Node && a.Host == b.Host && a.PID == b.PID && a.Incarnation == b.Incarnation &&
		a.Started.Truncate(time.Second).Equal(b.Started.Truncate(time.Second))
}
