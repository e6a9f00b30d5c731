package main

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// Passwords the CLI is given and must never show. awkward has the
// characters that break naive URL parsing; its pieces are checked too.
const (
	plainPW   = "Hunter2pw"
	awkwardPW = "Qz9@x:/#Sekr"
)

// leaks names the first piece of a password s shows, or "".
func leaks(s string, more ...string) string {
	for _, p := range append([]string{plainPW, "Qz9", "Sekr"}, more...) {
		if strings.Contains(s, p) {
			return p
		}
	}
	return ""
}

// commandPaths lists every command of the CLI, hidden ones included.
func commandPaths(c *cobra.Command) [][]string {
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		out = append(out, path)
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(c, nil)
	return out
}

// No command shows a password it was given: not in --help (flag defaults
// from the environment), not on stdout or stderr in table or JSON, not in
// an error; whether the URL comes from the environment, a flag, a
// resource list or a config file.
func TestNoCommandShowsAPassword(t *testing.T) {
	unreach := func(scheme, pw string) string {
		return scheme + "://u:" + url.PathEscape(pw) + "@127.0.0.1:1/x"
	}
	raw := func(scheme, pw string) string { return scheme + "://u:" + pw + "@127.0.0.1:1/x" } // unencoded: not even a valid URL
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`{"resources": {"pg": "`+unreach("postgres", plainPW)+`", "mysql": "`+raw("mysql", awkwardPW)+`"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	logDir := newLogDir(t)
	gtrid := "demo.01a22424f646.3ce3b1c7.01a224256b76"
	sources := []struct {
		name string
		env  map[string]string
		ops  []string // flags of the operator commands
		demo []string // flags of demo, bench and selfcheck
	}{
		{"environment", map[string]string{"XABRIDGE_PG": unreach("postgres", plainPW), "XABRIDGE_MYSQL": unreach("mysql", awkwardPW)}, nil, nil},
		{"environment, unencoded", map[string]string{"XABRIDGE_PG": raw("postgres", awkwardPW), "XABRIDGE_MYSQL": raw("mysql", awkwardPW)}, nil, nil},
		{"flags", nil,
			[]string{"--resource", "pg=" + unreach("postgres", plainPW), "--resource", "mysql=" + raw("mysql", awkwardPW)},
			[]string{"--pg", raw("postgres", awkwardPW), "--mysql=" + unreach("mysql", plainPW)}},
		{"query parameter", map[string]string{"XABRIDGE_PG": "postgres://u@127.0.0.1:1/x?password=" + plainPW, "XABRIDGE_MYSQL": "mysql://u@127.0.0.1:1/x?passwd=" + plainPW}, nil, nil},
		{"mysql dsn", map[string]string{"XABRIDGE_PG": "host=127.0.0.1 port=1 password=" + plainPW, "XABRIDGE_MYSQL": "u:" + awkwardPW + "@tcp(127.0.0.1:1)/x"}, nil, nil},
		{"resource list", map[string]string{"XABRIDGE_RESOURCES": "pg=" + unreach("postgres", plainPW) + ",mysql=" + raw("mysql", awkwardPW)}, nil, nil},
		{"config file", map[string]string{"XABRIDGE_CONFIG": cfg}, nil, nil},
		{"store in the environment", map[string]string{"XABRIDGE_STORE": unreach("postgres", plainPW), "XABRIDGE_PG": unreach("postgres", awkwardPW)}, nil, nil},
		{"malformed resource", nil, []string{"--resource", unreach("postgres", plainPW)}, nil},
	}
	t.Chdir(t.TempDir()) // a command's default directories land here, not in the source tree
	for _, src := range sources {
		t.Run(src.name, func(t *testing.T) {
			// Only this source's databases: none of the caller's.
			for _, k := range []string{"XABRIDGE_PG", "XABRIDGE_MYSQL", "XABRIDGE_RESOURCES", "XABRIDGE_CONFIG", "XABRIDGE_STORE", "XABRIDGE_STORE_SCHEMA"} {
				t.Setenv(k, "")
			}
			for k, v := range src.env {
				t.Setenv(k, v)
			}
			ops := append([]string{"--log-dir", logDir}, src.ops...)
			runs := [][]string{
				{"list"}, {"list", "-o", "json"}, {"show", gtrid}, {"show", gtrid, "-o", "json"},
				{"resolve", gtrid, "--commit"}, {"recover", "--dry-run"}, {"recover", "--dry-run", "-o", "json"},
				{"doctor", "--timeout", "2s"}, {"doctor", "--timeout", "2s", "-o", "json"},
			}
			for i := range runs {
				runs[i] = append(runs[i], ops...)
			}
			// The same commands on a shared store, given as the source's
			// PostgreSQL URL (by flag or through XABRIDGE_STORE).
			storeURL := first(os.Getenv("XABRIDGE_PG"), unreach("postgres", plainPW))
			for _, r := range [][]string{{"list"}, {"show", gtrid}, {"resolve", gtrid, "--rollback"}, {"recover"}, {"recover", "--dry-run", "-o", "json"},
				{"nodes"}, {"nodes", "-o", "json"}, {"log", "dump"}, {"log", "verify"}} {
				runs = append(runs, append(append(r, "--store", storeURL), src.ops...), append(append(r, "--store", unreach("postgres", awkwardPW)), src.ops...))
			}
			for _, r := range [][]string{{"demo", "transfer", "--count", "1"}, {"demo", "check"}, {"bench"}, {"bench", "-o", "json"},
				{"selfcheck", "--duration", "1s"}, {"demo", "transfer", "--count", "1", "--store", unreach("postgres", plainPW)}} {
				runs = append(runs, append(r, src.demo...))
			}
			for _, p := range commandPaths(newRootCmd(nil, nil)) {
				runs = append(runs, append(p, "--help"))
			}
			for _, args := range runs {
				out, errOut, code := cli(t, args...)
				if p := leaks(out + errOut); p != "" {
					t.Errorf("xabridge %s (exit %d) shows %q:\n%s%s", strings.Join(args, " "), code, p, out, errOut)
				}
			}
		})
	}
}

// --help names where a URL default comes from, never its value.
func TestHelpShowsWhereURLDefaultsComeFrom(t *testing.T) {
	t.Setenv("XABRIDGE_PG", "postgres://u:"+plainPW+"@h/db")
	for _, args := range [][]string{{"demo", "transfer"}, {"demo", "check"}, {"bench"}, {"selfcheck"}} {
		out, _, _ := cli(t, append(args, "--help")...)
		if !strings.Contains(out, `(default "$XABRIDGE_PG")`) || !strings.Contains(out, `(default "$XABRIDGE_MYSQL")`) {
			t.Errorf("%v --help does not name $XABRIDGE_PG and $XABRIDGE_MYSQL as the defaults:\n%s", args, out)
		}
	}
}

// The same with real databases, so that the commands get past connecting:
// the report headers, bench's JSON command line, the tables and JSON of the
// operator commands. A PostgreSQL server that trusts its clients ignores a
// password parameter; one that does not has a password in its URL already.
func TestNoOutputShowsAPassword(t *testing.T) {
	pg, my := dbtest.PG(t), dbtest.MySQL(t)
	own := urlPasswords(pg, my)
	if len(urlPasswords(pg)) == 0 {
		sep := "?"
		if strings.Contains(pg, "?") {
			sep = "&"
		}
		pg += sep + "password=" + plainPW
	}
	prefix := "xab_pw_" + randHex(3)
	t.Cleanup(func() {
		b, err := bank.Open(context.Background(), pg, my, 2)
		if err == nil {
			_ = b.SetPrefix(prefix)
			_ = b.Drop(context.Background())
			b.Close()
		}
	})
	logDir := newLogDir(t)
	res := []string{"--log-dir", logDir, "--resource", "pg=" + pg, "--resource", "mysql=" + my}
	for _, args := range [][]string{
		{"demo", "transfer", "--pg", pg, "--mysql", my, "--count", "20", "--table-prefix", prefix, "--log-dir", t.TempDir(), "--baseline"},
		{"demo", "check", "--pg", pg, "--mysql", my, "--table-prefix", prefix},
		append([]string{"list", "-o", "json"}, res...), append([]string{"list"}, res...),
		append([]string{"recover", "--dry-run", "-o", "json"}, res...), append([]string{"recover", "--dry-run"}, res...),
		append([]string{"show", "demo.01a22424f646.3ce3b1c7.01a224256b76"}, res...),
		append([]string{"show", "demo.01a22424f646.3ce3b1c7.01a224256b76", "-o", "json"}, res...),
		append([]string{"resolve", "demo.01a22424f646.3ce3b1c7.01a224256b76", "--rollback"}, res...),
		append([]string{"doctor", "-o", "json"}, res...), append([]string{"doctor"}, res...),
		{"bench", "--pg", pg, "--mysql", my, "--table-prefix", prefix, "--log-dir", t.TempDir(), "--clients", "1",
			"--modes", "baseline,xa", "--duration", "100ms", "--rounds", "1", "--warmup", "0s", "--progress=false", "-o", "json"},
	} {
		out, errOut, code := cli(t, args...)
		if p := leaks(out+errOut, own...); p != "" {
			t.Errorf("xabridge %s (exit %d) shows %q:\n%s%s", args[0], code, p, out, errOut)
		}
		if args[0] == "bench" && !strings.Contains(out, `"command": "`) {
			t.Errorf("bench -o json has no command line (exit %d):\n%s%s", code, out, errOut)
		}
	}
}

// urlPasswords returns the passwords the URLs hold.
func urlPasswords(urls ...string) []string {
	var out []string
	for _, s := range urls {
		if u, err := url.Parse(s); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && len(pw) >= 4 {
				out = append(out, pw)
			}
		}
	}
	return out
}

// The last line of defence: whatever a driver puts in an error, the
// password of a URL from the arguments or the environment is not shown.
func TestErrorsAreScrubbed(t *testing.T) {
	t.Setenv("XABRIDGE_PG", "postgres://u:"+plainPW+"@h/db")
	t.Setenv("XABRIDGE_MYSQL", "")
	t.Setenv("XABRIDGE_RESOURCES", "my=mysql://u:Sekr3tpw@h/db")
	args := []string{"list", "--resource", "pg=postgres://h/db?password=Qz9arg"}
	for _, msg := range []string{"auth " + plainPW + " refused", "saw Sekr3tpw", "bad Qz9arg"} {
		if got := scrubError(errors.New(msg), args); leaks(got, "Sekr3tpw", "Qz9arg") != "" {
			t.Errorf("scrubError(%q) = %q", msg, got)
		}
	}
}
