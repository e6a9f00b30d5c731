package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// scRun runs the built binary with the test databases in its environment.
func scRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(cliBinary(t), args...)
	cmd.Env = append(os.Environ(), "XABRIDGE_PG="+dbtest.PG(t), "XABRIDGE_MYSQL="+dbtest.MySQL(t))
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

func scField(t *testing.T, out, name string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q line in:\n%s", name, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// A short selfcheck on the test databases kills children, recovers after
// each kill, finds no violation and nothing stranded, exits 0 and removes
// its tables.
func TestSelfcheckKillsRecoversAndReports(t *testing.T) {
	prefix := "xab_sc_" + randHex(3)
	out, errOut, code := scRun(t, "selfcheck", "--duration", "4s", "--node-id", "sc-"+randHex(3), "--table-prefix", prefix, "--workers", "2")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if k := scField(t, out, "kills"); k < 1 {
		t.Errorf("%d kills", k)
	}
	if n := scField(t, out, "transfers"); n < 1 {
		t.Errorf("%d transfers committed", n)
	}
	if v, s := scField(t, out, "violations"), scField(t, out, "stranded"); v != 0 || s != 0 {
		t.Errorf("violations %d, stranded %d", v, s)
	}
	b, err := bank.Open(context.Background(), dbtest.PG(t), dbtest.MySQL(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var reg *string
	if err := b.PGPool.QueryRow(context.Background(), "SELECT to_regclass($1)::text", prefix+"_accounts").Scan(&reg); err != nil {
		t.Fatal(err)
	}
	if reg != nil {
		t.Errorf("table %s_accounts left behind after a clean run", prefix)
	}
}

func TestSelfcheckUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"no databases", []string{"selfcheck"}, map[string]string{"XABRIDGE_PG": "", "XABRIDGE_MYSQL": ""}},
		{"zero duration", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--duration", "0s"}, nil},
		{"no workers", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--workers", "0"}, nil},
		{"an argument", []string{"selfcheck", "now"}, nil},
		{"bad node id", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--node-id", "Not Valid"}, nil},
		{"store not postgres", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--store", "mysql://x@127.0.0.1:1/x"}, nil},
		{"store and log-dir", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--store", "postgres://x@127.0.0.1:1/x", "--log-dir", "/tmp/x"}, nil},
		{"lease-ttl without store", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--lease-ttl", "1s"}, nil},
		{"bad store schema", []string{"selfcheck", "--pg", "postgres://x@127.0.0.1:1/x", "--mysql", "mysql://x@127.0.0.1:1/x", "--store", "postgres://x@127.0.0.1:1/x", "--store-schema", "A-B"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errw bytes.Buffer
			if code := run(context.Background(), tc.args, &out, &errw); code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, errw.String())
			}
		})
	}
}

// selfcheck --store: the children run as replicas on a shared store; after
// every kill the node is settled once its lease expired (by a restarted
// coordinator or a takeover); no violation, nothing stranded, and the
// store's schema it created is dropped.
func TestSelfcheckOnStore(t *testing.T) {
	prefix := "xab_scs_" + randHex(3)
	out, errOut, code := scRun(t, "selfcheck", "--store", dbtest.PG(t), "--lease-ttl", "1s", "--duration", "8s",
		"--node-id", "scs-"+randHex(3), "--table-prefix", prefix, "--workers", "2")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if k := scField(t, out, "kills"); k < 2 {
		t.Errorf("%d kills, want at least 2 (a restart and a takeover round)", k)
	}
	if v, s := scField(t, out, "violations"), scField(t, out, "stranded"); v != 0 || s != 0 {
		t.Errorf("violations %d, stranded %d", v, s)
	}
	b, err := bank.Open(context.Background(), dbtest.PG(t), dbtest.MySQL(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var n int
	if err := b.PGPool.QueryRow(context.Background(), "SELECT count(*) FROM pg_namespace WHERE nspname = $1", prefix+"_store").Scan(&n); err != nil || n != 0 {
		t.Errorf("store schema %s_store left behind after a clean run (%d, %v)", prefix, n, err)
	}
	t.Logf("%s", out)
}
