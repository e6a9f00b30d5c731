package mysql

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// otherDB is an empty database of the test server.
const otherDB = "xabridge_mistake"

// The identity names the server (the same through two databases) and the
// database (different); a resource with no database has none.
func TestIdentity(t *testing.T) {
	e := newEnv(t, 4)
	ctx := ctxT(t)
	e.sqlExec("CREATE DATABASE IF NOT EXISTS " + otherDB)
	id, err := e.r.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id.Engine != "mysql" || id.Server == "" || id.Database == "" {
		t.Fatalf("identity %+v", id)
	}
	if got, ok := e.r.CachedIdentity(); !ok || got != id {
		t.Fatalf("CachedIdentity = %+v, %v; want %+v", got, ok, id)
	}
	cfg := e.cfg.Clone()
	cfg.DBName = otherDB
	other, err := New("other", openDB(t, cfg, 2)).Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if other.Server != id.Server || other.Database != otherDB {
		t.Fatalf("other database's identity %+v, want server %s db %s", other, id.Server, otherDB)
	}
	if err := drivers.CheckIdentity("mysql", id.String(), other); !errors.Is(err, drivers.ErrWrongResource) {
		t.Fatalf("CheckIdentity across databases = %v", err)
	}
}

// Recovery's keeper calls never create the decision table: in a database
// without it (or with none selected), CheckDecisionTable and FenceAbort
// fail with ErrNoDecisionTable saying where, and nothing is created.
func TestNoDecisionTableIsAnError(t *testing.T) {
	e := newEnv(t, 4)
	ctx := ctxT(t)
	e.sqlExec("CREATE DATABASE IF NOT EXISTS " + otherDB)
	now := time.Now()
	g, err := drivers.ParseGlobalID(fmt.Sprintf("mytest.%012x.%08x.%012x", now.UnixMilli(), 1, now.Add(time.Minute).UnixMilli()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ db, want string }{
		{otherDB, `in database "` + otherDB + `": is this the keeper's database?`},
		{"", "no database selected"},
	} {
		cfg := e.cfg.Clone()
		cfg.DBName = tc.db
		r := New("other", openDB(t, cfg, 2))
		if err := r.CheckDecisionTable(ctx); !errors.Is(err, decisionlog.ErrNoDecisionTable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("db %q: CheckDecisionTable = %v, want ErrNoDecisionTable %q", tc.db, err, tc.want)
		}
		if tc.db == "" {
			continue // FenceAbort fails there anyway (no database)
		}
		if _, err := r.FenceAbort(ctx, g); !errors.Is(err, decisionlog.ErrNoDecisionTable) {
			t.Errorf("db %q: FenceAbort = %v, want ErrNoDecisionTable", tc.db, err)
		}
	}
	if n := e.queryInt("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '" + otherDB + "' AND TABLE_NAME = '" + DecisionTable + "'"); n != 0 {
		t.Fatal("a decision table was created")
	}
}
