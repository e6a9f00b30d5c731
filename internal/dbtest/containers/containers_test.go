package containers

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The containers are configured for two-phase commit and for the URLs the
// tests expect, with an environment the local and the public images both
// understand.
func TestSpecs(t *testing.T) {
	ss := specs(LocalPGImage, "mysql:8.4")
	if len(ss) != 2 || ss[0].key != "XABRIDGE_PG" || ss[1].key != "XABRIDGE_MYSQL" {
		t.Fatalf("specs: %+v", ss)
	}
	if ss[0].image != LocalPGImage || ss[1].image != "mysql:8.4" {
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

// Overrides win; "local" and "public" need no engine.
func TestImages(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode, pgOverride, wantPG, wantMy string
		wantErr                          bool
	}{
		{"local", "", LocalPGImage, LocalMySQLImage, false},
		{"public", "", PublicPGImage, PublicMySQLImage, false},
		{"public", "example/pg:1", "example/pg:1", PublicMySQLImage, false},
		{"cloud", "", "", "", true},
	} {
		t.Setenv("XABRIDGE_TEST_IMAGES", tc.mode)
		t.Setenv("XABRIDGE_TEST_PG_IMAGE", tc.pgOverride)
		t.Setenv("XABRIDGE_TEST_MYSQL_IMAGE", "")
		pg, my, err := Images(ctx)
		if (err != nil) != tc.wantErr || pg != tc.wantPG || my != tc.wantMy {
			t.Errorf("mode %q override %q: Images = %q, %q, %v; want %q, %q, error %v", tc.mode, tc.pgOverride, pg, my, err, tc.wantPG, tc.wantMy, tc.wantErr)
		}
	}
}

func TestOverlaps(t *testing.T) {
	routes := []netip.Prefix{netip.MustParsePrefix("10.213.0.0/16"), netip.MustParsePrefix("172.17.0.0/16")}
	if !overlaps(netip.MustParsePrefix("10.213.5.0/24"), routes) {
		t.Error("10.213.5.0/24 inside 10.213.0.0/16 not seen as overlapping")
	}
	if overlaps(netip.MustParsePrefix("10.214.5.0/24"), routes) {
		t.Error("10.214.5.0/24 seen as overlapping")
	}
	if len(hostRoutes()) == 0 {
		t.Log("no IPv4 routes read from /proc/net/route")
	}
}
