package mysql

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/redact"
)

func TestParseURL(t *testing.T) {
	const secret = "s3cr%40t-pw" // percent-encoded "s3cr@t-pw"
	cases := []struct {
		url                       string
		user, pass, net, addr, db string
		check                     func(t *testing.T, u string)
	}{
		{url: "mysql://app:" + secret + "@db.example:3307/shop", user: "app", pass: "s3cr@t-pw", net: "tcp", addr: "db.example:3307", db: "shop"},
		{url: "mariadb://root@/xabridge", user: "root", net: "tcp", addr: "127.0.0.1:3306", db: "xabridge"},
		{url: "MySQL://root@127.0.0.1/", user: "root", net: "tcp", addr: "127.0.0.1:3306"},
		{url: "mysql://u@[::1]:3306/d", user: "u", net: "tcp", addr: "[::1]:3306", db: "d"},
		{url: "mysql://u@h/my%20db", user: "u", net: "tcp", addr: "h:3306", db: "my db"},
		{url: "mysql://u@/d?socket=/run/mysqld/mysqld.sock", user: "u", net: "unix", addr: "/run/mysqld/mysqld.sock", db: "d"},
		{url: "mysql://u@h/d?tls=skip-verify&parseTime=true&timeout=5s&loc=Europe%2FParis&innodb_lock_wait_timeout=3",
			user: "u", net: "tcp", addr: "h:3306", db: "d"},
	}
	for _, c := range cases {
		cfg, err := ParseURL(c.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", redact.URL(c.url), err)
			continue
		}
		if cfg.User != c.user || cfg.Passwd != c.pass || cfg.Net != c.net || cfg.Addr != c.addr || cfg.DBName != c.db {
			t.Errorf("ParseURL(%q) = user %q pass %q net %q addr %q db %q", redact.URL(c.url), cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName)
		}
	}

	// Parameters pass through to go-sql-driver.
	cfg, err := ParseURL("mysql://u@h/d?tls=skip-verify&parseTime=true&timeout=5s&loc=Europe%2FParis&innodb_lock_wait_timeout=3")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS == nil || !cfg.TLS.InsecureSkipVerify || !cfg.ParseTime || cfg.Timeout != 5*time.Second ||
		cfg.Loc.String() != "Europe/Paris" || cfg.Params["innodb_lock_wait_timeout"] != "3" {
		t.Errorf("parameters not passed through: tls=%v parseTime=%v timeout=%v loc=%v params=%v", cfg.TLS, cfg.ParseTime, cfg.Timeout, cfg.Loc, cfg.Params)
	}
	cfg, err = ParseURL("mysql://u@dbhost:3306/d?tls=true")
	if err != nil || cfg.TLS == nil || cfg.TLS.ServerName != "dbhost" {
		t.Errorf("tls=true: %v, server name %q", err, cfg.TLS.ServerName)
	}

	// Errors never contain the password, in any spelling.
	bad := []string{
		"mysql://app:" + secret + "@db:notaport/shop",
		"mysql://app:" + secret + "@db/shop/extra",
		"mysql://app:" + secret + "@db/shop?tls=nosuchconfig",
		"mysql://app:" + secret + "@db/shop?parseTime=maybe",
		"mysql://app:" + secret + "@db/shop?password=other-" + secret,
		"mysql://app:" + secret + "@db/shop?socket=/x",
		"postgres://app:" + secret + "@db/shop",
		"mysql://app:s3cr%zz@db/shop",
		"mysql://app:s3cr t@db/shop",
		"mysql:app:" + secret,
	}
	for _, u := range bad {
		_, err := ParseURL(u)
		if err == nil {
			t.Errorf("ParseURL(%q): no error", redact.URL(u))
			continue
		}
		for _, leak := range []string{secret, "s3cr@t-pw", "s3cr%zz", "s3cr t", "s3cr"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("ParseURL error leaks the password: %v", err)
			}
		}
	}
}

func TestOpenRegistry(t *testing.T) {
	base := dbtest.MySQL(t)
	ctx := ctxT(t)
	for _, scheme := range []string{"mysql", "mariadb"} {
		u := scheme + strings.TrimPrefix(base, "mysql")
		r, closer, err := drivers.Open(ctx, "reg-"+scheme, u)
		if err != nil {
			t.Fatalf("Open(%s): %v", scheme, err)
		}
		if r.Name() != "reg-"+scheme {
			t.Errorf("Name = %q", r.Name())
		}
		if _, err := r.Recover(ctx); err != nil {
			t.Errorf("Recover: %v", err)
		}
		_ = closer.Close()
	}

	// A wrong password: an error, without the password.
	pu, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	pu.User = url.UserPassword("xab_no_such_user", "wrong-pw-123")
	_, _, err = drivers.Open(ctx, "bad", pu.String())
	if err == nil {
		t.Fatal("Open with a wrong user succeeded")
	}
	if strings.Contains(err.Error(), "wrong-pw-123") {
		t.Errorf("Open error leaks the password: %v", err)
	}

	// Nothing listening: an error, without the password.
	_, _, err = drivers.Open(context.Background(), "down", "mysql://u:wrong-pw-123@127.0.0.1:1/d?timeout=1s")
	if err == nil || strings.Contains(err.Error(), "wrong-pw-123") {
		t.Errorf("Open of a closed port: %v", err)
	}
}

func TestParseVersion(t *testing.T) {
	cases := []struct {
		v                   string
		maria               bool
		major, minor, patch int
		unsupported         bool
	}{
		{"10.11.19-MariaDB-0+deb12u1", true, 10, 11, 19, false},
		{"5.5.5-10.4.32-MariaDB", true, 10, 4, 32, true},
		{"11.4.2-MariaDB", true, 11, 4, 2, false},
		{"8.0.36", false, 8, 0, 36, false},
		{"8.4.0-commercial", false, 8, 4, 0, false},
		{"5.7.6-log", false, 5, 7, 6, true},
		{"5.7.44", false, 5, 7, 44, false},
		{"weird", false, 0, 0, 0, false},
	}
	for _, c := range cases {
		f := parseVersion(c.v)
		if f.mariaDB != c.maria || f.major != c.major || f.minor != c.minor || f.patch != c.patch || (f.unsupported() != "") != c.unsupported {
			t.Errorf("parseVersion(%q) = %+v, unsupported %q", c.v, f, f.unsupported())
		}
	}
}
