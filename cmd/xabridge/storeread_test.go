package main

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/pgstore"
	"github.com/xabridge/xabridge/internal/strand"
)

// withRole creates a login role for the test (dropped afterwards) with the
// privileges in grants ({schema} is the scene's schema) and returns the
// scene's PostgreSQL URL logged in as it.
func (s *storeScene) withRole(t *testing.T, grants ...string) string {
	t.Helper()
	ctx := context.Background()
	role, pass := "xbc_role_"+randHex(4), randHex(8)
	if _, err := s.pool.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD '"+pass+"'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = s.pool.Exec(ctx, "DROP OWNED BY "+role)
		_, _ = s.pool.Exec(ctx, "DROP ROLE "+role)
	})
	for _, g := range grants {
		if _, err := s.pool.Exec(ctx, strings.ReplaceAll(g, "{schema}", s.schema)+" TO "+role); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	u, err := url.Parse(s.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, pass)
	return u.String()
}

// A store whose decisions cannot be read (here: a role that may read the
// store's version and leases but not its decision tables; an unreachable
// database is refused before any read) is never "no decision": list,
// show, resolve and recover --store say that the store could not be read,
// exit non-zero, and change nothing.
func TestStoreReadFailureIsNoVerdict(t *testing.T) {
	s := newStoreScene(t)
	ctx := context.Background()
	now := time.Now()

	// A committed transaction of a dead node: with the decision unread, a
	// takeover would see an undecided branch of a dead incarnation and
	// roll it back.
	g := strand.GlobalID("rf-dead", now.Add(-time.Minute), now.Add(time.Hour), 12)
	s.abandon(t, "rf-dead", func(st *pgstore.Store) {
		if err := st.Commit(ctx, decisionlog.Decision{GTRID: g, Participants: s.participants(t)}); err != nil {
			t.Fatal(err)
		}
	})
	s.prepare(t, g, true, true, 4)
	before := s.node(t, "rf-dead")

	tables := func(names ...string) string {
		var q []string
		for _, n := range names {
			q = append(q, pgx.Identifier{s.schema, n}.Sanitize())
		}
		return strings.Join(q, ", ")
	}
	roURL := s.withRole(t,
		"GRANT USAGE, CREATE ON SCHEMA {schema}",
		"GRANT ALL ON "+tables(pgstore.TableMeta, pgstore.TableNodes))
	flags := []string{"--store", roURL, "--store-schema", s.schema}
	res := s.resources()

	for _, c := range []struct {
		name string
		args []string
	}{
		{"list node", append(append([]string{"list", "--node-id", "rf-dead"}, flags...), res...)},
		{"list all", append(append([]string{"list"}, flags...), res...)},
		{"list json", append(append([]string{"list", "-o", "json", "--node-id", "rf-dead"}, flags...), res...)},
		{"show", append(append([]string{"show", g.String()}, flags...), res...)},
		{"show json", append(append([]string{"show", "-o", "json", g.String()}, flags...), res...)},
		{"resolve rollback", append(append([]string{"resolve", g.String(), "--rollback"}, flags...), res...)},
		{"resolve commit", append(append([]string{"resolve", g.String(), "--commit"}, flags...), res...)},
		{"recover dry run", append(append([]string{"recover", "--dry-run"}, flags...), res...)},
		{"recover node", append(append([]string{"recover", "--node-id", "rf-dead"}, flags...), res...)},
		{"recover", append(append([]string{"recover"}, flags...), res...)},
		{"nodes", append(append([]string{"nodes"}, flags...), res...)},
	} {
		out, errOut, code := cli(t, c.args...)
		all := out + errOut
		if code == exitOK || code == exitUsage {
			t.Errorf("%s: exit %d, want an error\n%s", c.name, code, all)
		}
		if !strings.Contains(all, "permission denied") {
			t.Errorf("%s: the error does not name the failed read\n%s", c.name, all)
		}
		for _, verdict := range []string{"unknown global transaction", "no commit decision", "orphan", "presumed abort", "rolled back"} {
			if strings.Contains(all, verdict) {
				t.Errorf("%s: a verdict (%q) built on a read that failed\n%s", c.name, verdict, all)
			}
		}
		if strings.Contains(all, roURL) {
			t.Errorf("%s: the URL with its password is shown", c.name)
		}
	}
	if n := s.prepared(t, g); n != 2 {
		t.Fatalf("%d of 2 branches still prepared: something acted on an unread decision", n)
	}
	if after := s.node(t, "rf-dead"); after.Epoch != before.Epoch || !sameHolder(after.Holder, before.Holder) {
		t.Errorf("rf-dead's lease changed (epoch %d → %d, holder %s → %s): a command claimed it before finding the store unreadable",
			before.Epoch, after.Epoch, before.Holder.Node, after.Holder.Node)
	}
	rd, err := pgstore.OpenReader(ctx, s.pool, pgstore.ReaderOptions{Schema: s.schema})
	if err != nil {
		t.Fatal(err)
	}
	e, found, err := rd.LookupContext(ctx, g)
	if err != nil || !found || e.State != decisionlog.StateCommitted || len(e.Actions) != 0 {
		t.Fatalf("decision after the refusals: %+v found=%v err=%v, want committed with no action", e, found, err)
	}
}
