package postgres_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/postgres"
)

// checksByName indexes a Doctor result and fails on duplicate names.
func checksByName(t *testing.T, cs []drivers.Check) map[string]drivers.Check {
	t.Helper()
	m := map[string]drivers.Check{}
	for _, c := range cs {
		if _, dup := m[c.Name]; dup {
			t.Fatalf("check %q reported twice: %+v", c.Name, cs)
		}
		if (c.Status == drivers.CheckOK) != (c.Fix == "") {
			t.Errorf("check %s: status %s with fix %q", c.Name, c.Status, c.Fix)
		}
		m[c.Name] = c
	}
	return m
}

func checkNames(cs []drivers.Check) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

// The shared server is ready for 2PC: every check passes, except that
// max_prepared_transactions is judged against the server's own
// max_connections, read here independently.
func TestDoctorReadyServer(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	cs := e.r.Doctor(ctx, drivers.DoctorOptions{})
	if got, want := strings.Join(checkNames(cs), ","), "version,max_prepared_transactions,role,prepared,clock"; got != want {
		t.Fatalf("checks %s, want %s: %+v", got, want, cs)
	}
	m := checksByName(t, cs)

	var version, user string
	var maxPrep, maxConn int64
	if err := e.admin.QueryRow(ctx, `SELECT current_setting('server_version'), current_user::text,
		current_setting('max_prepared_transactions')::bigint, current_setting('max_connections')::bigint`).
		Scan(&version, &user, &maxPrep, &maxConn); err != nil {
		t.Fatal(err)
	}
	if c := m["version"]; c.Status != drivers.CheckOK || c.Detail != "PostgreSQL "+version {
		t.Errorf("version: %+v, want ok %q", c, "PostgreSQL "+version)
	}
	wantMP := drivers.CheckOK
	if maxPrep < maxConn {
		wantMP = drivers.CheckWarn
	}
	c := m["max_prepared_transactions"]
	if c.Status == drivers.CheckFail || (c.Status == drivers.CheckOK && wantMP == drivers.CheckWarn) ||
		!strings.Contains(c.Detail, fmt.Sprintf("max_prepared_transactions = %d", maxPrep)) {
		t.Errorf("max_prepared_transactions (server: %d, max_connections %d): %+v", maxPrep, maxConn, c)
	}
	if c := m["role"]; c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "connected as "+user+", a superuser") {
		t.Errorf("role (the test servers connect as superuser %s): %+v", user, c)
	}
	// Other tests may leave prepared transactions of their own here; none
	// of them makes the check fail.
	if c := m["prepared"]; c.Status == drivers.CheckFail {
		t.Errorf("prepared: %+v", c)
	}
	if c := m["clock"]; c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "this host (±") {
		t.Errorf("clock (server on this host): %+v", c)
	}
	e.assertPoolClean()
}

// The second server runs with max_prepared_transactions = 0: the check
// fails and says how to fix it.
func TestDoctorMaxPreparedTransactionsZero(t *testing.T) {
	pool := newPool(t, noTwoPhaseURL(t), 2)
	cs := postgres.New("pg-no2pc", pool).Doctor(ctxT(t), drivers.DoctorOptions{})
	m := checksByName(t, cs)
	c := m["max_prepared_transactions"]
	if c.Status != drivers.CheckFail || !strings.Contains(c.Detail, "max_prepared_transactions = 0: prepared transactions are disabled") ||
		!strings.Contains(c.Fix, "max_prepared_transactions") || !strings.Contains(c.Fix, "restart") {
		t.Errorf("max_prepared_transactions: %+v", c)
	}
	for _, name := range []string{"version", "role", "prepared", "clock"} {
		if m[name].Status != drivers.CheckOK {
			t.Errorf("%s: %+v", name, m[name])
		}
	}
}

// A branch of ours whose XID began 90 days ago, prepared on a table of its
// own, is reported with its gid and why it matters; with a threshold above
// its age it is not counted.
func TestDoctorOldPreparedTransaction(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tbl := e.table("xab_pg_doctor", "id BIGINT PRIMARY KEY")
	begin := time.Now().Add(-90 * 24 * time.Hour).Truncate(time.Millisecond).UTC()
	xid := drivers.XID{Global: drivers.MustGlobalID(fmt.Sprintf("doctor-%06x", rand.Uint32()&0xffffff), begin, rand.Uint32(), begin.Add(time.Minute))}
	b, err := e.r.Begin(ctx, xid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Rollback(ctx)
		_ = b.Close()
		if n := e.preparedCount(xid.GID()); n != 0 {
			t.Errorf("cleanup left %s prepared", xid.GID())
		}
	})
	h, err := handleOf(ctx, e.r, b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	// A hostile foreign gid next to it must not break the report.
	t.Cleanup(prepareRaw(t, e.url, "xab-doctor '\"\n\t"+e.sfx))

	m := checksByName(t, e.r.Doctor(ctx, drivers.DoctorOptions{MaxPreparedAge: time.Hour}))
	c := m["prepared"]
	for _, want := range []string{"Oldest: gid " + xid.GID() + " (xabridge's)", "age 90d", "hold their locks", "block VACUUM"} {
		if !strings.Contains(c.Detail, want) {
			t.Errorf("prepared check does not say %q: %+v", want, c)
		}
	}
	if c.Status != drivers.CheckWarn || !strings.Contains(c.Fix, "xabridge recover") {
		t.Errorf("prepared: %+v", c)
	}
	for _, c := range m {
		if strings.ContainsAny(c.Detail+c.Fix, "\n\t") {
			t.Errorf("check %s holds raw control characters: %q", c.Name, c.Detail)
		}
	}

	// Above its age it no longer counts (others' branches may, so only the
	// gid's absence is asserted).
	m = checksByName(t, e.r.Doctor(ctx, drivers.DoctorOptions{MaxPreparedAge: 100 * 24 * time.Hour}))
	if strings.Contains(m["prepared"].Detail, xid.GID()) {
		t.Errorf("a 90-day-old branch reported against a 100-day threshold: %+v", m["prepared"])
	}
}

// A clock that disagrees with the server's is reported by how much: a few
// seconds warn, more than the fence window fails.
func TestDoctorClockOffset(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	tests := []struct {
		skew time.Duration // added to this host's clock
		want drivers.CheckStatus
		side string
	}{
		{0, drivers.CheckOK, ""},
		{3 * time.Second, drivers.CheckWarn, "behind this host"},
		{-45 * time.Second, drivers.CheckFail, "ahead of this host"},
	}
	for _, tt := range tests {
		now := func() time.Time { return time.Now().Add(tt.skew) }
		m := checksByName(t, e.r.Doctor(ctx, drivers.DoctorOptions{Now: now}))
		c := m["clock"]
		if c.Status != tt.want || !strings.Contains(c.Detail, tt.side) {
			t.Errorf("local clock off by %v: %+v, want %s (%s)", tt.skew, c, tt.want, tt.side)
		}
	}
}

// An unreachable server is one failed "connect" check, without the password.
func TestDoctorUnreachable(t *testing.T) {
	secret := fmt.Sprintf("pw-%08x", rand.Uint32())
	pool := newPool(t, "postgres://xab:"+secret+"@127.0.0.1:1/xabridge?sslmode=disable&connect_timeout=5", 1)
	cs := postgres.New("pg-down", pool).Doctor(ctxT(t), drivers.DoctorOptions{})
	if len(cs) != 1 || cs[0].Name != "connect" || cs[0].Status != drivers.CheckFail ||
		!strings.HasPrefix(cs[0].Detail, "cannot connect: ") || cs[0].Fix == "" {
		t.Fatalf("got %+v, want one failed connect check", cs)
	}
	if strings.Contains(cs[0].Detail+cs[0].Fix, secret) {
		t.Errorf("the password is in the report: %+v", cs[0])
	}
}
