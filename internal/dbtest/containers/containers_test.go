package containers

import (
	"slices"
	"strings"
	"testing"
)

// The containers are configured for two-phase commit and for the URLs the
// tests expect; starting them needs Docker, which CI here does not have.
func TestSpecs(t *testing.T) {
	t.Setenv("XABRIDGE_TEST_PG_IMAGE", "")
	t.Setenv("XABRIDGE_TEST_MYSQL_IMAGE", "mysql:8.4")
	ss := specs()
	if len(ss) != 2 || ss[0].key != "XABRIDGE_PG" || ss[1].key != "XABRIDGE_MYSQL" {
		t.Fatalf("specs: %+v", ss)
	}
	if ss[0].image != DefaultPGImage || ss[1].image != "mysql:8.4" {
		t.Fatalf("images %s, %s", ss[0].image, ss[1].image)
	}
	if !slices.Contains(ss[0].cmd, "max_prepared_transactions=300") {
		t.Fatalf("postgres without two-phase commit: %v", ss[0].cmd)
	}
	if u := ss[0].url("127.0.0.1:5"); u != "postgres://postgres@127.0.0.1:5/xabridge?sslmode=disable" {
		t.Fatalf("postgres url %s", u)
	}
	if u := ss[1].url("127.0.0.1:6"); !strings.HasPrefix(u, "mysql://root@127.0.0.1:6/") {
		t.Fatalf("mysql url %s", u)
	}
}
