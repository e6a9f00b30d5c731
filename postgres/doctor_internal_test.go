package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

func TestMaxPreparedCheck(t *testing.T) {
	tests := []struct {
		name                   string
		maxPrep, maxConn, used int
		want                   drivers.CheckStatus
		detail, fix            string
	}{
		{"disabled", 0, 100, 0, drivers.CheckFail, "prepared transactions are disabled", "max_prepared_transactions = 100 (at least max_connections) in postgresql.conf and restart"},
		{"below max_connections", 50, 100, 3, drivers.CheckWarn, "max_prepared_transactions = 50, below max_connections = 100, 3 in use", "= 100"},
		{"equal to max_connections", 100, 100, 3, drivers.CheckOK, "max_prepared_transactions = 100 (max_connections 100), 3 in use", ""},
		{"above, count unknown", 200, 100, -1, drivers.CheckOK, "max_prepared_transactions = 200 (max_connections 100)", ""},
		{"nearly full", 100, 100, 95, drivers.CheckWarn, "95 in use: nearly full", "xabridge recover"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := maxPreparedCheck(tt.maxPrep, tt.maxConn, tt.used)
			if c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) || !strings.Contains(c.Fix, tt.fix) {
				t.Errorf("got %s\n  detail %q\n  fix    %q\nwant %s with %q / %q", c.Status, c.Detail, c.Fix, tt.want, tt.detail, tt.fix)
			}
			if (c.Status == drivers.CheckOK) != (c.Fix == "") {
				t.Errorf("status %s with fix %q", c.Status, c.Fix)
			}
		})
	}
}

func TestRoleCheck(t *testing.T) {
	c := roleCheck(pgSettings{user: "postgres", database: "ledger", superuser: true})
	if c.Status != drivers.CheckOK || !strings.Contains(c.Detail, "postgres, a superuser") {
		t.Errorf("superuser: %+v", c)
	}
	c = roleCheck(pgSettings{user: "app", database: "ledger"})
	if c.Status != drivers.CheckWarn || !strings.Contains(c.Detail, "must run as the role that prepared") || !strings.Contains(c.Detail, "ledger") || c.Fix == "" {
		t.Errorf("plain role: %+v", c)
	}
	c = roleCheck(pgSettings{user: "a b\n", database: "d'x"})
	if !strings.Contains(c.Detail, `"a b\n"`) || !strings.Contains(c.Detail, `"d'x"`) {
		t.Errorf("odd names are not quoted: %q", c.Detail)
	}
}

// Ours age from the begin time in their gid, by this host's clock; others
// from their PREPARE, by the server's. The oldest is named, quoted when its
// gid is not plain.
func TestPreparedCheck(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	xid := func(begin time.Time) string {
		return drivers.XID{Global: drivers.MustGlobalID("n1", begin, 7, begin.Add(time.Minute))}.GID()
	}
	oldOurs := xid(now.Add(-3 * time.Hour))
	newOurs := xid(now.Add(-time.Minute))
	hostile := "x'; DROP TABLE t; --\n\x1b[2J"
	tests := []struct {
		name   string
		ps     []pgPrepared
		want   drivers.CheckStatus
		detail []string
	}{
		{"none", nil, drivers.CheckOK, []string{"none prepared longer than 1h (0 prepared on the server, 0 of them xabridge's)"}},
		{"young ones", []pgPrepared{{gid: newOurs, serverAge: 3 * time.Hour}, {gid: "other", serverAge: time.Minute}}, drivers.CheckOK,
			[]string{"(2 prepared on the server, 1 of them xabridge's)"}},
		{"old ours", []pgPrepared{{gid: newOurs}, {gid: oldOurs, owner: "app", database: "db", xidAge: 1234}}, drivers.CheckWarn,
			[]string{"1 of 2 prepared transactions are older than 1h", "block VACUUM", "hold their locks", "Oldest: gid " + oldOurs + " (xabridge's), owner app, database db, age 3h, xid age 1234"}},
		{"oldest is a hostile foreign gid", []pgPrepared{{gid: oldOurs}, {gid: hostile, owner: "o", database: "d", serverAge: 50 * time.Hour}}, drivers.CheckWarn,
			[]string{"2 of 2", `Oldest: gid "x'; DROP TABLE t; --\n\x1b[2J" (not xabridge's)`, "age 2d2h"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := preparedCheck(tt.ps, time.Hour, now)
			if c.Status != tt.want {
				t.Fatalf("status %s, want %s: %q", c.Status, tt.want, c.Detail)
			}
			for _, s := range tt.detail {
				if !strings.Contains(c.Detail, s) {
					t.Errorf("Detail %q\ndoes not contain %q", c.Detail, s)
				}
			}
			if strings.ContainsAny(c.Detail, "\n\x1b") {
				t.Errorf("Detail holds raw control characters: %q", c.Detail)
			}
		})
	}
}

func TestDisplayID(t *testing.T) {
	tests := []struct{ in, want string }{
		{"xab1:n.0123:00", "xab1:n.0123:00"},
		{"postgres", "postgres"},
		{"", `""`},
		{"has space", `"has space"`},
		{"it's", `"it's"`},
		{"tab\there", `"tab\there"`},
		{"é", `"é"`},
		{strings.Repeat("a", 150), strings.Repeat("a", 100) + "…"},
	}
	for _, tt := range tests {
		if got := drivers.DisplayID(tt.in); got != tt.want {
			t.Errorf("drivers.DisplayID(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
