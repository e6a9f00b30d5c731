package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/postgres"
)

// otherDB is an empty database of the test cluster: where a keeper URL
// naming the wrong database points.
const otherDB = "xabridge_mistake"

// otherDBResource returns a resource on otherDB, creating the database.
func otherDBResource(t *testing.T, e *env) *postgres.Resource {
	t.Helper()
	var pe *pgconn.PgError
	if _, err := e.admin.Exec(context.Background(), "CREATE DATABASE "+otherDB); err != nil && !(errors.As(err, &pe) && pe.Code == "42P04") {
		t.Fatal(err)
	}
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + otherDB
	return postgres.New("pg-other", newPool(t, u.String(), 4))
}

// The identity names the cluster (the same for two databases) and the
// database (different), and is cached.
func TestIdentity(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	id, err := e.r.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id.Engine != "postgres" || id.Server == "" || id.Database == "" {
		t.Fatalf("identity %+v", id)
	}
	if got, ok := e.r.CachedIdentity(); !ok || got != id {
		t.Fatalf("CachedIdentity = %+v, %v; want %+v", got, ok, id)
	}
	if back, err := drivers.ParseIdentity(id.String()); err != nil || back != id {
		t.Fatalf("ParseIdentity(%q) = %+v, %v", id.String(), back, err)
	}
	other, err := otherDBResource(t, e).Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if other.Server != id.Server || other.Database != otherDB {
		t.Fatalf("other database's identity %+v, want server %s db %s", other, id.Server, otherDB)
	}
	if err := drivers.CheckIdentity("pg", id.String(), other); !errors.Is(err, drivers.ErrWrongResource) {
		t.Fatalf("CheckIdentity across databases = %v", err)
	}
}

// Recovery's keeper calls never create the decision table: in a database
// without it, CheckDecisionTable and FenceAbort fail with
// ErrNoDecisionTable naming the database, and the table is still absent.
func TestNoDecisionTableIsAnError(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	r := otherDBResource(t, e)
	now := time.Now()
	g, err := drivers.ParseGlobalID(fmt.Sprintf("pgtest.%012x.%08x.%012x", now.UnixMilli(), 1, now.Add(time.Minute).UnixMilli()))
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"CheckDecisionTable": func() error { return r.CheckDecisionTable(ctx) },
		"FenceAbort":         func() error { _, err := r.FenceAbort(ctx, g); return err },
	} {
		err := call()
		if !errors.Is(err, decisionlog.ErrNoDecisionTable) || !strings.Contains(err.Error(), `in database "`+otherDB+`": is this the keeper's database?`) {
			t.Errorf("%s = %v, want ErrNoDecisionTable naming %s", name, err, otherDB)
		}
	}
	if err := r.CheckDecisionTable(ctx); err == nil {
		t.Fatal("a decision table was created")
	}
	if err := e.r.EnsureDecisionTable(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.r.CheckDecisionTable(ctx); err != nil {
		t.Fatalf("CheckDecisionTable with the table: %v", err)
	}
}
