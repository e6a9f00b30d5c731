package storeopt

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

const pw = "Hunter2pw"

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string // "" for valid
	}{
		{"none", Options{}, ""},
		{"postgres", Options{URL: "postgres://u:" + pw + "@db/app"}, ""},
		{"postgresql with schema", Options{URL: "postgresql://u@db:5433/app?sslmode=disable", Schema: "xab_store"}, ""},
		{"schema without url", Options{Schema: "s"}, "--store-schema \"s\" given without --store"},
		{"mysql", Options{URL: "mysql://u:" + pw + "@db/app"}, "is a PostgreSQL database"},
		{"keyword dsn", Options{URL: "host=db password=" + pw}, "want a PostgreSQL URL"},
		{"bad port", Options{URL: "postgres://u:" + pw + "@db:port/app"}, "not a valid"},
		{"bad sslmode", Options{URL: "postgres://u:" + pw + "@db/app?sslmode=sometimes"}, "not a valid PostgreSQL URL"},
		{"ambiguous password", Options{URL: "postgres://u:a@b/c@db/app"}, "percent-encode"},
		{"upper-case schema", Options{URL: "postgres://u@db/app", Schema: "Store"}, "--store-schema"},
		{"schema with a quote", Options{URL: "postgres://u@db/app", Schema: `x"; DROP`}, "--store-schema"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalid)):
				t.Fatalf("Validate() = %v, want ErrInvalid with %q", err, tt.want)
			case err != nil && strings.Contains(err.Error(), pw):
				t.Fatalf("Validate() shows the password: %v", err)
			}
		})
	}
}

// An unreachable store is ErrUnreachable, naming the database, not the
// password.
func TestConnectUnreachable(t *testing.T) {
	o := Options{URL: "postgres://u:" + pw + "@127.0.0.1:1/payments"}
	_, err := Connect(context.Background(), o, 1, 2*time.Second)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "payments on 127.0.0.1:1") || strings.Contains(err.Error(), pw) {
		t.Fatalf("Connect = %v", err)
	}
}
