package redact

import (
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
