package drivers

import (
	"errors"
	"strings"
	"testing"
)

func TestIdentityRoundTrip(t *testing.T) {
	for _, id := range []Identity{
		{Engine: "postgres", Server: "7301234567890", Database: "ledger"},
		{Engine: "mysql", Server: "uid BBtG/q3p+= datadir /var/lib/my sql/", Database: "wal/let:%x"},
		{Engine: "mysql", Server: "host h:3306 datadir /d", Database: ""},
	} {
		back, err := ParseIdentity(id.String())
		if err != nil || back != id {
			t.Errorf("ParseIdentity(%q) = %+v, %v; want %+v", id.String(), back, err, id)
		}
	}
	for _, bad := range []string{"", "postgres", ":x/y", "postgres:x", "mysql:%zz/db"} {
		if _, err := ParseIdentity(bad); err == nil {
			t.Errorf("ParseIdentity(%q) accepted", bad)
		}
	}
}

func TestCheckIdentity(t *testing.T) {
	pg := Identity{Engine: "postgres", Server: "1", Database: "ledger"}
	my := Identity{Engine: "mysql", Server: "uid A", Database: "wallet"}
	tests := []struct {
		name     string
		recorded string
		got      Identity
		want     string // "" for a match
	}{
		{"same", my.String(), my, ""},
		{"nothing recorded", "", pg, ""},
		{"other server", my.String(), Identity{Engine: "mysql", Server: "uid B", Database: "wallet"},
			`resource "mysql" is mysql server uid B db wallet but the decision names mysql server uid A db wallet: is --resource mysql pointing at the right server?`},
		{"other database", my.String(), Identity{Engine: "mysql", Server: "uid A", Database: "x"}, "db x but the decision names"},
		{"other engine", my.String(), pg, `resource "mysql" is a postgres database but the decision names a mysql one`},
		{"unreadable record", "garbage", my, "unreadable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckIdentity("mysql", tt.recorded, tt.got)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("CheckIdentity = %v, want a match", err)
				}
				return
			}
			if !errors.Is(err, ErrWrongResource) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CheckIdentity = %v, want ErrWrongResource mentioning %q", err, tt.want)
			}
		})
	}
}
