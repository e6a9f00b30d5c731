package mysql

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/drivertest"
)

// doctorDB creates a database of the test's own on the shared server (so
// that other tests' tables cannot change what Doctor reports about tables)
// and returns its driver configuration; the database is dropped at the end.
func doctorDB(t *testing.T, e *env) *mysqldriver.Config {
	t.Helper()
	name := fmt.Sprintf("xab_doctor_%08x", rand.Uint32())
	e.sqlExec("CREATE DATABASE " + name)
	t.Cleanup(func() {
		ctx, cancel := bg()
		defer cancel()
		if _, err := e.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Errorf("DROP DATABASE %s: %v", name, err)
		}
	})
	cfg := e.cfg.Clone()
	cfg.DBName = name
	return cfg
}

// checksByName indexes a Doctor result, failing on duplicate names and on
// a fix given to an ok check or missing from another.
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

func (e *env) queryString(q string) string {
	e.t.Helper()
	var s string
	ctx, cancel := bg()
	defer cancel()
	if err := e.admin.QueryRowContext(ctx, q).Scan(&s); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return s
}

// isolationVar is the name of the isolation level variable on the test
// server: transaction_isolation, or tx_isolation before MySQL 5.7.20 and
// MariaDB 11.1.
func (e *env) isolationVar() string {
	ctx, cancel := bg()
	defer cancel()
	var s string
	err := e.admin.QueryRowContext(ctx, "SELECT @@SESSION.transaction_isolation").Scan(&s)
	if isNumber(err, erUnknownSystemVariable) {
		return "tx_isolation"
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return "transaction_isolation"
}

// The shared server, seen through a database of the test's own, is ready
// for 2PC; each verdict is checked against the server's own settings.
func TestDoctorReadyServer(t *testing.T) {
	e := newEnv(t, 2)
	cfg := doctorDB(t, e)
	db := openDB(t, cfg, 2)
	e.sqlExec("CREATE TABLE " + cfg.DBName + ".t (id INT PRIMARY KEY) ENGINE=InnoDB")
	cs := New("my-doctor", db).Doctor(ctxT(t), drivers.DoctorOptions{})
	m := checksByName(t, cs)

	version := e.queryString("SELECT VERSION()")
	fl := parseVersion(version)
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	want := "version,binlog,storage_engine,isolation,xa_recover,prepared,clock"
	if !fl.mariaDB && fl.atLeast(8, 0, 29) {
		want = "version,xa_detach_on_prepare," + strings.TrimPrefix(want, "version,")
	}
	if got := strings.Join(names, ","); got != want {
		t.Fatalf("checks %s, want %s", got, want)
	}
	if c := m["version"]; c.Status != drivers.CheckOK || !strings.Contains(c.Detail, version) {
		t.Errorf("version (server %s): %+v", version, c)
	}
	logBin := e.queryInt("SELECT @@GLOBAL.log_bin") == 1
	format := e.queryString("SELECT @@SESSION.binlog_format")
	c := m["binlog"]
	switch {
	case !logBin:
		if c.Status != drivers.CheckOK || c.Detail != "binary log off" {
			t.Errorf("binlog (off): %+v", c)
		}
	case format != "ROW":
		if c.Status != drivers.CheckWarn || !strings.Contains(c.Detail, "binlog_format = "+format) {
			t.Errorf("binlog (on, %s): %+v", format, c)
		}
	}
	if c := m["storage_engine"]; c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "every table in database "+cfg.DBName+" supports XA") {
		t.Errorf("storage_engine: %+v", c)
	}
	level := e.queryString("SELECT @@SESSION." + e.isolationVar())
	if c := m["isolation"]; !strings.HasPrefix(c.Detail, level) || (level != "READ-UNCOMMITTED") != (c.Status == drivers.CheckOK) {
		t.Errorf("isolation (server %s): %+v", level, c)
	}
	who := e.queryString("SELECT CURRENT_USER()")
	if c := m["xa_recover"]; c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "XA RECOVER works for "+who) {
		t.Errorf("xa_recover: %+v", c)
	}
	// Other tests' branches come and go; none of them makes this fail.
	if c := m["prepared"]; c.Status == drivers.CheckFail {
		t.Errorf("prepared: %+v", c)
	}
	if c := m["clock"]; c.Status != drivers.CheckOK {
		t.Errorf("clock (server on this host): %+v", c)
	}
	wantCleanPool(t, db, 2)
}

// Tables whose engines ignore XA are named, because writes to them would
// silently stay out of the global transaction.
func TestDoctorTablesWithoutXA(t *testing.T) {
	e := newEnv(t, 2)
	cfg := doctorDB(t, e)
	for _, q := range []string{
		"CREATE TABLE " + cfg.DBName + ".good (id INT PRIMARY KEY) ENGINE=InnoDB",
		"CREATE TABLE " + cfg.DBName + ".legacy (id INT PRIMARY KEY) ENGINE=MyISAM",
		"CREATE TABLE " + cfg.DBName + ".`odd name` (id INT PRIMARY KEY) ENGINE=MEMORY",
	} {
		e.sqlExec(q)
	}
	c := checksByName(t, New("my-doctor", openDB(t, cfg, 2)).Doctor(ctxT(t), drivers.DoctorOptions{}))["storage_engine"]
	want := `2 table(s) in database ` + cfg.DBName + ` use engines without XA, so writes to them stay out of global transactions: legacy (MyISAM), "odd name" (MEMORY)`
	if c.Status != drivers.CheckWarn || !strings.Contains(c.Detail, want) || !strings.Contains(c.Fix, "ENGINE = InnoDB") {
		t.Errorf("got %+v\nwant warn with %q", c, want)
	}
}

// What the isolation check says is true: at every level a branch runs at
// that level, prepares, survives its session's end and commits from
// another session. Only READ UNCOMMITTED is a warning.
func TestXAAtEveryIsolationLevel(t *testing.T) {
	e := newEnv(t, 2)
	cfg := doctorDB(t, e)
	tbl := cfg.DBName + ".iso"
	e.sqlExec("CREATE TABLE " + tbl + " (id BIGINT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB")
	isoVar := e.isolationVar()
	tests := []struct {
		level string
		want  drivers.CheckStatus
	}{
		{"READ-UNCOMMITTED", drivers.CheckWarn},
		{"READ-COMMITTED", drivers.CheckOK},
		{"REPEATABLE-READ", drivers.CheckOK},
		{"SERIALIZABLE", drivers.CheckOK},
	}
	for i, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			ctx := ctxT(t)
			lc := cfg.Clone()
			lc.Params = map[string]string{isoVar: "'" + tt.level + "'"}
			r := New("my-iso", openDB(t, lc, 2))
			c := checksByName(t, r.Doctor(ctx, drivers.DoctorOptions{}))["isolation"]
			if c.Status != tt.want || !strings.HasPrefix(c.Detail, tt.level) {
				t.Errorf("isolation check: %+v, want %s for %s", c, tt.want, tt.level)
			}

			xid := drivertest.NewXID()
			db, err := r.Begin(ctx, xid)
			if err != nil {
				t.Fatal(err)
			}
			b := db.(*branch)
			defer b.Close()
			var level string
			if err := b.user.QueryRowContext(ctx, "SELECT @@SESSION."+isoVar).Scan(&level); err != nil || level != tt.level {
				t.Fatalf("branch runs at %q (%v), want %s", level, err, tt.level)
			}
			id := int64(i + 1)
			if _, err := b.user.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d, %d)", tbl, id, id)); err != nil {
				t.Fatal(err)
			}
			if v, err := b.Prepare(ctx); err != nil || v != drivers.VoteCommit {
				t.Fatalf("Prepare at %s: %v %v", tt.level, v, err)
			}
			if err := b.Close(); err != nil { // the session ends; the branch stays prepared
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "CommitPrepared from another session", func() bool {
				err := r.CommitPrepared(ctx, xid)
				if err != nil && !errors.Is(err, drivers.ErrBusy) {
					t.Fatalf("CommitPrepared at %s: %v", tt.level, err)
				}
				return err == nil
			})
			if n := e.queryInt(fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, id)); n != 1 {
				t.Errorf("row of the branch committed at %s: %d rows", tt.level, n)
			}
		})
	}
}

// A branch of ours whose XID began 90 days ago is reported with its XID,
// its node and its age; a threshold above its age leaves it out.
func TestDoctorOldPreparedBranch(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	tbl := e.table("doctor")
	begin := time.Now().Add(-90 * 24 * time.Hour).Truncate(time.Millisecond).UTC()
	node := fmt.Sprintf("doctor-%06x", rand.Uint32()&0xffffff)
	xid := drivers.XID{Global: drivers.MustGlobalID(node, begin, rand.Uint32(), begin.Add(time.Minute))}
	db, err := e.r.Begin(ctx, xid)
	if err != nil {
		t.Fatal(err)
	}
	b := db.(*branch)
	t.Cleanup(func() {
		ctx, cancel := bg()
		defer cancel()
		if err := b.Rollback(ctx); err != nil {
			t.Errorf("cleanup: Rollback: %v", err)
		}
		_ = b.Close()
	})
	e.insert(ctx, b, tbl, 10)
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	c := checksByName(t, e.r.Doctor(ctx, drivers.DoctorOptions{MaxPreparedAge: time.Hour}))["prepared"]
	for _, want := range []string{"prepared longer than 1h", "Oldest: " + xid.GID() + " (node " + node + "), age 90d", "row locks"} {
		if !strings.Contains(c.Detail, want) {
			t.Errorf("prepared check does not say %q: %+v", want, c)
		}
	}
	if c.Status != drivers.CheckWarn || !strings.Contains(c.Fix, "xabridge recover") {
		t.Errorf("prepared: %+v", c)
	}
	c = checksByName(t, e.r.Doctor(ctx, drivers.DoctorOptions{MaxPreparedAge: 100 * 24 * time.Hour}))["prepared"]
	if strings.Contains(c.Detail, xid.GID()) {
		t.Errorf("a 90-day-old branch reported against a 100-day threshold: %+v", c)
	}
}

// A server that cannot be reached, or refuses the password, is one failed
// "connect" check that does not contain the password.
func TestDoctorCannotConnect(t *testing.T) {
	secret := fmt.Sprintf("pw-%08x", rand.Uint32())
	down := testConfig(t).Clone()
	down.Addr = "127.0.0.1:1"
	down.Passwd = secret
	wrong := testConfig(t).Clone()
	wrong.Passwd = secret
	tests := []struct {
		name   string
		cfg    *mysqldriver.Config
		detail string
	}{
		{"unreachable", down, "connection refused"},
		{"wrong password", wrong, "Access denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := New("my-down", openDB(t, tt.cfg, 1)).Doctor(ctxT(t), drivers.DoctorOptions{})
			if len(cs) != 1 || cs[0].Name != "connect" || cs[0].Status != drivers.CheckFail ||
				!strings.HasPrefix(cs[0].Detail, "cannot connect: ") || !strings.Contains(cs[0].Detail, tt.detail) || cs[0].Fix == "" {
				t.Fatalf("got %+v, want one failed connect check mentioning %q", cs, tt.detail)
			}
			if strings.Contains(cs[0].Detail+cs[0].Fix, secret) {
				t.Errorf("the password is in the report: %+v", cs[0])
			}
		})
	}
}

// ---------------------------------------------------------------- verdicts

func TestVersionCheck(t *testing.T) {
	tests := []struct {
		version string
		want    drivers.CheckStatus
		detail  string
	}{
		{"10.11.19-MariaDB-0+deb12u1", drivers.CheckOK, "MariaDB 10.11.19-MariaDB-0+deb12u1: prepared XA branches survive"},
		{"5.5.5-10.5.0-MariaDB", drivers.CheckOK, "MariaDB"},
		{"10.4.32-MariaDB", drivers.CheckFail, "10.5 or later is needed"},
		{"8.0.36", drivers.CheckOK, "MySQL 8.0.36"},
		{"5.7.7-log", drivers.CheckOK, "MySQL 5.7.7-log"},
		{"5.7.6", drivers.CheckFail, "5.7.7 or later is needed"},
		{"banana 1", drivers.CheckWarn, `unrecognised server version "banana 1"`},
	}
	for _, tt := range tests {
		c := versionCheck(parseVersion(tt.version))
		if c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) || (c.Status == drivers.CheckOK) != (c.Fix == "") {
			t.Errorf("%s: %+v, want %s with %q", tt.version, c, tt.want, tt.detail)
		}
	}
}

func TestDetachCheck(t *testing.T) {
	for _, on := range []bool{true, false} {
		c := detachCheck(on)
		if c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "xabridge works with either value") {
			t.Errorf("xa_detach_on_prepare %v: %+v", on, c)
		}
	}
}

func TestBinlogCheck(t *testing.T) {
	maria, my80, my8030 := parseVersion("10.11.19-MariaDB"), parseVersion("8.0.29"), parseVersion("8.0.36")
	tests := []struct {
		name   string
		fl     *flavour
		on     bool
		format string
		want   drivers.CheckStatus
		detail string
	}{
		{"off", maria, false, "MIXED", drivers.CheckOK, "binary log off"},
		{"row", maria, true, "ROW", drivers.CheckOK, "binary log on, binlog_format = ROW"},
		{"mixed", maria, true, "MIXED", drivers.CheckWarn, "unsafe for replication"},
		{"statement", my8030, true, "STATEMENT", drivers.CheckWarn, "unsafe for replication"},
		{"mysql before 8.0.30", my80, true, "ROW", drivers.CheckWarn, "not crash-safe"},
		{"mysql 8.0.30+ row", my8030, true, "ROW", drivers.CheckOK, "binlog_format = ROW"},
	}
	for _, tt := range tests {
		c := binlogCheck(tt.fl, tt.on, tt.format)
		if c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) || (c.Status == drivers.CheckOK) != (c.Fix == "") {
			t.Errorf("%s: %+v, want %s with %q", tt.name, c, tt.want, tt.detail)
		}
	}
}

func TestEngineCheck(t *testing.T) {
	bad := []tableEngine{{"a", "MyISAM"}, {"b", "Aria"}, {"c", "MEMORY"}, {"d", "CSV"}, {"e", "MyISAM"}, {"f", "MyISAM"}, {"g", "MyISAM"}}
	tests := []struct {
		name   string
		def    string
		defXA  bool
		hasDB  bool
		bad    []tableEngine
		want   drivers.CheckStatus
		detail []string
	}{
		{"all good", "InnoDB", true, true, nil, drivers.CheckOK, []string{"default storage engine InnoDB; every table in database app supports XA"}},
		{"no database", "InnoDB", true, false, nil, drivers.CheckOK, []string{"no database in the URL"}},
		{"default without XA", "Aria", false, true, nil, drivers.CheckWarn, []string{"default storage engine Aria does not support XA"}},
		{"many bad tables", "InnoDB", true, true, bad, drivers.CheckWarn, []string{"7 table(s)", "a (MyISAM), b (Aria), c (MEMORY), d (CSV), e (MyISAM), and 2 more"}},
	}
	for _, tt := range tests {
		c := engineCheck(tt.def, tt.defXA, "app", tt.hasDB, tt.bad)
		if c.Status != tt.want || (c.Status == drivers.CheckOK) != (c.Fix == "") {
			t.Errorf("%s: %+v, want %s", tt.name, c, tt.want)
		}
		for _, s := range tt.detail {
			if !strings.Contains(c.Detail, s) {
				t.Errorf("%s: Detail %q does not contain %q", tt.name, c.Detail, s)
			}
		}
	}
}

func TestIsolationCheck(t *testing.T) {
	tests := []struct {
		level   string
		mariaDB bool
		want    drivers.CheckStatus
		detail  string
	}{
		{"REPEATABLE-READ", true, drivers.CheckOK, "REPEATABLE-READ"},
		{"SERIALIZABLE", false, drivers.CheckOK, "SERIALIZABLE"},
		{"READ-COMMITTED", true, drivers.CheckOK, "MariaDB's manual names REPEATABLE READ as the minimum"},
		{"READ-COMMITTED", false, drivers.CheckOK, "atomicity does not depend on it"},
		{"READ-UNCOMMITTED", true, drivers.CheckWarn, "prepared branches that may still be rolled back"},
		{"SNAPSHOT", true, drivers.CheckWarn, "unknown isolation level SNAPSHOT"},
	}
	for _, tt := range tests {
		c := isolationCheck(tt.level, tt.mariaDB)
		if c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) || (c.Status == drivers.CheckOK) != (c.Fix == "") {
			t.Errorf("%s (MariaDB %v): %+v, want %s with %q", tt.level, tt.mariaDB, c, tt.want, tt.detail)
		}
	}
}

// MySQL 8 refuses XA RECOVER without XA_RECOVER_ADMIN (error 1227): the
// check fails and its fix is the GRANT to run, safely quoted.
func TestXARecoverVerdict(t *testing.T) {
	denied := &mysqldriver.MySQLError{Number: erAccessDenied, Message: "Access denied; you need (at least one of) the XA_RECOVER_ADMIN privilege(s) for this operation"}
	tests := []struct {
		name    string
		who     string
		mariaDB bool
		err     error
		want    drivers.CheckStatus
		detail  string
		fix     string
	}{
		{"mariadb", "root@localhost", true, nil, drivers.CheckOK, "XA RECOVER works for root@localhost (3 prepared branch(es) on the server); MariaDB lets every user", ""},
		{"mysql", "app@%", false, nil, drivers.CheckOK, "XA RECOVER works for app@%", ""},
		{"no privilege", "app@%", false, denied, drivers.CheckFail, "XA_RECOVER_ADMIN", "GRANT XA_RECOVER_ADMIN ON *.* TO 'app'@'%';"},
		{"odd account", `o'b\r@10.0.0.%`, false, denied, drivers.CheckFail, `"o'b\\r@10.0.0.%"`, `GRANT XA_RECOVER_ADMIN ON *.* TO 'o''b\\r'@'10.0.0.%';`},
		{"other error", "app@%", false, errors.New("invalid connection"), drivers.CheckFail, "XA RECOVER failed: invalid connection", "privileges"},
	}
	for _, tt := range tests {
		c := xaRecoverVerdict(tt.who, tt.mariaDB, 3, tt.err)
		if c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) || c.Fix != tt.fix && !strings.Contains(c.Fix, tt.fix) || (c.Status == drivers.CheckOK) != (c.Fix == "") {
			t.Errorf("%s: %+v\nwant %s with %q, fix %q", tt.name, c, tt.want, tt.detail, tt.fix)
		}
	}
}

func TestPreparedCheck(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	row := func(begin time.Time, node string) recoverRow {
		x := drivers.XID{Global: drivers.MustGlobalID(node, begin, 1, begin.Add(time.Minute))}
		g, b := x.Global.String(), x.BranchQualifier()
		return recoverRow{formatID: int64(drivers.FormatID), gtridLen: int64(len(g)), bqualLen: int64(len(b)), data: []byte(g + b)}
	}
	foreign := recoverRow{formatID: 1, gtridLen: 3, bqualLen: 0, data: []byte("abc")}
	older, old := row(now.Add(-50*time.Hour), "n2"), row(now.Add(-2*time.Hour), "n1")
	c := preparedCheck([]recoverRow{foreign, row(now.Add(-time.Minute), "n1"), old, older}, time.Hour, now)
	oldest, _ := drivers.ParseMySQLXID(older.formatID, older.gtridLen, older.bqualLen, older.data)
	if c.Status != drivers.CheckWarn || !strings.Contains(c.Detail, "2 branch(es) of xabridge prepared longer than 1h") ||
		!strings.Contains(c.Detail, "Oldest: "+oldest.GID()+" (node n2), age 2d2h") {
		t.Errorf("old branches: %+v", c)
	}
	c = preparedCheck([]recoverRow{foreign, row(now.Add(-time.Minute), "n1")}, time.Hour, now)
	if c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "(2 prepared: 1 xabridge's, 1 others'") {
		t.Errorf("young branches: %+v", c)
	}
}

func TestSQLString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"app", "'app'"},
		{"o'b", "'o''b'"},
		{`a\b`, `'a\\b'`},
		{"n\x00l\n", `'n\0l\n'`},
	}
	for _, tt := range tests {
		if got := sqlString(tt.in); got != tt.want {
			t.Errorf("sqlString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
