package redact

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// pw is the password every case hides; its pieces must not show either.
const pw = "s3cr@t:/#?&x"

func TestURL(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"postgres url", "postgres://u:hunter2@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable"},
		{"no password", "mysql://root@127.0.0.1:3306/x", "mysql://root@127.0.0.1:3306/x"},
		{"no user", "postgres://h/db", "postgres://h/db"},
		{"query password", "postgres://h/db?sslmode=disable&password=hunter2", "postgres://h/db?sslmode=disable&password=xxxxx"},
		{"query passwd", "mysql://u@h/db?Passwd=hunter2&x=1", "mysql://u@h/db?Passwd=xxxxx&x=1"},
		{"percent-encoded", "mysql://u:hun%40ter2@h/db", "mysql://u:xxxxx@h/db"},
		{"@ : / # ? in the password", "postgres://u:" + pw + "@h:5432/db", "postgres://u:xxxxx@h:5432/db"},
		{"numeric password with /", "postgres://u:12/34@h/db", "postgres://u:xxxxx@h/db"},
		{"numeric password with #", "postgres://u:12#34@h/db", "postgres://u:xxxxx@h/db"},
		{"both", "postgres://u:hunter2@h/db?password=hunter2", "postgres://u:xxxxx@h/db?password=xxxxx"},
		{"unbalanced host", "postgres://u:hunter2@[::1", "postgres://u:xxxxx@[::1"},
		{"@ in a parameter hides more, never less", "postgres://u:hunter2@h/db?application_name=a@b", "postgres://u:xxxxx@b"},
		{"mysql dsn", "u:hunter2@tcp(127.0.0.1:3306)/db?parseTime=true", "u:xxxxx@tcp(127.0.0.1:3306)/db?parseTime=true"},
		{"mysql dsn, awkward password", "u:" + pw + "@tcp(h:3306)/db", "u:xxxxx@tcp(h:3306)/db"},
		{"mysql dsn without password", "u@unix(/tmp/s)/db", "u@unix(/tmp/s)/db"},
		{"keyword/value", "host=h user=u password=hunter2 dbname=d", "host=h user=u password=xxxxx dbname=d"},
		{"keyword/value quoted", "host=h password='hun ter2' dbname=d", "host=h password=xxxxx dbname=d"},
		{"keyword/value awkward", "host=h password=" + pw, "host=h password=xxxxx"},
		{"bad scheme with credentials", "1x://u:hunter2@h", "(withheld)"},
		{"scheme without //", "mysql:u:hunter2", "(withheld)"},
		{"host and port", "localhost:5432", "localhost:5432"},
		{"plain text", "just-a-name", "just-a-name"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := URL(tt.in)
			if got != tt.want {
				t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
			}
			for _, secret := range []string{"hunter2", "hun%40ter2", "ter2", "s3cr", "12/34", "12#34"} {
				if strings.Contains(got, secret) {
					t.Errorf("URL(%q) = %q shows %q", tt.in, got, secret)
				}
			}
		})
	}
}

func TestArgs(t *testing.T) {
	in := []string{"xabridge", "bench", "--pg", "postgres://u:hunter2@h/db", "--mysql=mysql://u:hunter2@h/db",
		"--resource", "pg=postgres://h/db?password=hunter2", "--clients", "1,8", "password=hunter2", "--duration=5s"}
	want := []string{"xabridge", "bench", "--pg", "postgres://u:xxxxx@h/db", "--mysql=mysql://u:xxxxx@h/db",
		"--resource", "pg=postgres://h/db?password=xxxxx", "--clients", "1,8", "password=xxxxx", "--duration=5s"}
	got := Args(in)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Args:\n got %q\nwant %q", got, want)
	}
	if strings.Contains(in[3], Mask) {
		t.Error("Args changed its argument")
	}
}

func TestScrub(t *testing.T) {
	tests := []struct{ name, url, text, want string }{
		{"user info", "postgres://u:hunter2@h/db", "FATAL: password hunter2 rejected", "FATAL: password xxxxx rejected"},
		{"encoded", "mysql://u:hun%40ter2@h/db", "saw hun@ter2 and hun%40ter2", "saw xxxxx and xxxxx"},
		{"query", "postgres://h/db?password=hunter2", "x hunter2 y", "x xxxxx y"},
		{"awkward", "postgres://u:" + pw + "@h/db", "pw " + pw, "pw xxxxx"},
		{"keyword/value", "host=h password='hunter2'", "it was hunter2", "it was xxxxx"},
		{"dsn", "u:hunter2@tcp(h)/db", "hunter2!", "xxxxx!"},
		{"too short to scrub", "postgres://u:pw@h/db", "a pw b", "a pw b"},
		{"no password", "postgres://u@h/db", "u@h", "u@h"},
		{"punctuation", "mysql://u:s3cret!@h/db", "auth s3cret! failed", "auth xxxxx failed"},
		{"encoded / and @", "postgres://u:p%40ss%2Fw0rd@h/db", "bad p@ss/w0rd or p%40ss%2Fw0rd", "bad xxxxx or xxxxx"},
		{"not a url", "not a url", "nothing to do", "nothing to do"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Scrub(tt.url)(tt.text); got != tt.want {
				t.Errorf("Scrub(%q)(%q) = %q, want %q", tt.url, tt.text, got, tt.want)
			}
		})
	}
}

func TestPasswordsAndError(t *testing.T) {
	tests := []struct{ name, pw, text, want string }{
		{"as written", "hunter2", "auth hunter2 failed", "auth xxxxx failed"},
		{"percent-encoded in the text", "hun@ter2", "saw hun%40ter2", "saw xxxxx"},
		{"too short", "pw", "a pw b", "a pw b"},
		{"none", "", "nothing", "nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Passwords(tt.pw)(tt.text); got != tt.want {
				t.Errorf("Passwords(%q)(%q) = %q, want %q", tt.pw, tt.text, got, tt.want)
			}
			cause := errors.New(tt.text)
			err := Error(cause, Passwords(tt.pw))
			if err.Error() != tt.want {
				t.Errorf("Error: %q, want %q", err, tt.want)
			}
			// The chain survives only when nothing was hidden.
			if keep := tt.text == tt.want; errors.Is(err, cause) != keep {
				t.Errorf("Error kept the chain: %v, want %v", errors.Is(err, cause), keep)
			}
		})
	}
	if Error(nil, Passwords("hunter2")) != nil {
		t.Error("Error(nil) is not nil")
	}
}

// TestOneImplementation keeps this package the only one that masks
// passwords: no other non-test source of the module writes the mask or
// parses a URL's password for itself.
func TestOneImplementation(t *testing.T) {
	root := filepath.Join("..", "..")
	own, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := regexp.MustCompile(`"xxxxx"|User\.Password\(\)|url\.UserPassword\(`)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if abs, _ := filepath.Abs(path); abs == own || d.Name() == "testdata" || (d.Name() != ".." && strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(src), "\n") {
			if m := forbidden.FindString(line); m != "" && !allowedPasswordRead(path, line) {
				t.Errorf("%s:%d: %s: mask passwords with package redact", path, i+1, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// allowedPasswordRead is a line that reads a password to use it (to
// connect), not to hide it.
func allowedPasswordRead(path, line string) bool {
	return filepath.Base(path) == "url.go" && strings.Contains(line, "cfg.Passwd, _ = u.User.Password()")
}

func TestAmbiguous(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"postgres://u:hunter2@h/db", false},
		{"postgres://u:hun%40ter2@h/db", false},
		{"postgres://u:hunter2@h/db?application_name=a@b", false},
		{"postgres://u:" + pw + "@h/db", true},
		{"mysql://u:Qz9@x:/#Sekr@127.0.0.1:1/x", true},
		{"postgres://u:12/34@h/db", true},
		{"postgres://u:12?x@h/db", true},
		{"postgres://u:ab/cd@h/db", false}, // unparseable: refused by the drivers, shown by none
		{"u:" + pw + "@tcp(h)/db", false},
		{"host=h password=x@y", false},
	}
	for _, tt := range tests {
		if got := Ambiguous(tt.in); got != tt.want {
			t.Errorf("Ambiguous(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
