package selfcheck

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
)

func TestValidate(t *testing.T) {
	good := func() Options {
		return Options{PGURL: "postgres://u@h/db", MyURL: "mysql://u@h/db", Prefix: "xab_selfcheck", Accounts: 20, Balance: 1000,
			NodeID: "selfcheck", Duration: time.Second, Workers: 4}
	}
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"valid", func(*Options) {}, ""},
		{"no urls", func(o *Options) { o.PGURL = "" }, "both --pg and --mysql are needed"},
		{"no workers", func(o *Options) { o.Workers = 0 }, "--workers, --accounts and --balance at least 1"},
		{"zero duration", func(o *Options) { o.Duration = 0 }, "--duration must be positive"},
		{"bad node id", func(o *Options) { o.NodeID = "Not Valid" }, "--node-id: "},
		{"bad prefix", func(o *Options) { o.Prefix = "x-y" }, "--table-prefix: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good()
			tt.change(&o)
			err := o.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// selfcheck refuses to reset tables it did not create, and leaves them as
// they were.
func TestRefusesTablesItDidNotCreate(t *testing.T) {
	ctx := context.Background()
	var sfx [3]byte
	_, _ = rand.Read(sfx[:])
	prefix := "xab_sc_" + hex.EncodeToString(sfx[:])
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tbl := prefix + "_accounts"
	if _, err := b.MyDB.ExecContext(ctx, "CREATE TABLE "+tbl+" (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.MyDB.ExecContext(context.Background(), "DROP TABLE IF EXISTS "+tbl) })
	if _, err := b.MyDB.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (1, 42)"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = Run(ctx, &out, io.Discard, Options{PGURL: dbtest.PG(t), MyURL: dbtest.MySQL(t), Prefix: prefix, Accounts: 20, Balance: 1000,
		NodeID: "sc-refuse", Duration: 2 * time.Second, Workers: 4, Child: []string{"false"}})
	if err == nil || !strings.Contains(err.Error(), "refusing to touch table "+tbl+" on mysql") {
		t.Fatalf("Run: %v (output %q); want it refusing %s", err, out.String(), tbl)
	}
	var bal int64
	if err := b.MyDB.QueryRowContext(ctx, "SELECT balance FROM "+tbl+" WHERE id = 1").Scan(&bal); err != nil || bal != 42 {
		t.Fatalf("the user's table was changed: balance %d, %v", bal, err)
	}
	var reg *string
	if err := b.PGPool.QueryRow(ctx, "SELECT to_regclass($1)::text", prefix+"_selfcheck").Scan(&reg); err != nil || reg != nil {
		t.Fatalf("a marker was created on postgres after refusing: %v %v", reg, err)
	}
}
