package demo

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/storeopt"
	"github.com/xabridge/xabridge/xa"
)

func TestValidate(t *testing.T) {
	good := func() Options {
		return Options{PGURL: "postgres://u@h/db", MyURL: "mysql://u@h/db", Prefix: bank.DefaultPrefix, Count: 10,
			Concurrency: 2, Accounts: 10, Balance: 100, NodeID: "demo"}
	}
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"valid", func(*Options) {}, ""},
		{"no urls", func(o *Options) { o.PGURL = "" }, "both --pg and --mysql are needed"},
		{"bad prefix", func(o *Options) { o.Prefix = "X" }, "--table-prefix: "},
		{"no workers", func(o *Options) { o.Concurrency = 0 }, "--concurrency and --accounts >= 1"},
		{"bad keeper", func(o *Options) { o.Keeper = "redis" }, `--decision-resource "redis"`},
		{"commit delay", func(o *Options) { o.CommitDelay = -time.Millisecond }, "--commit-delay must be between"},
		{"bad node id", func(o *Options) { o.NodeID = "No Way" }, "--node-id: "},
		{"store not postgres", func(o *Options) { o.Store.URL = "mysql://u@h/db" }, "is a PostgreSQL database"},
		{"store schema", func(o *Options) { o.Store = storeopt.Options{URL: "postgres://u@h/db", Schema: "Bad"} }, "--store-schema"},
		{"lease ttl without store", func(o *Options) { o.LeaseTTL = time.Second }, "--lease-ttl goes with --store"},
		{"lease ttl too short", func(o *Options) { o.Store.URL, o.LeaseTTL = "postgres://u@h/db", time.Millisecond }, "--lease-ttl must be between"},
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

func TestPrintState(t *testing.T) {
	tests := []struct {
		name  string
		st    bank.State
		want  int64
		lines []string
		err   error
	}{
		{"conserved and atomic", bank.State{PGTotal: 60, MyTotal: 40, PGTransfers: 2, MyTransfers: 2, NetPG: -5, NetMy: -5}, 100,
			[]string{"balances:  postgres 60 + mysql 40 = 100 (start 100)  ok: conserved", "transfers: 2 in postgres, 2 in mysql, 0 in only one  ok: atomic"}, nil},
		{"money lost", bank.State{PGTotal: 60, MyTotal: 30}, 100, []string{"FAIL: NOT CONSERVED"}, ErrViolated},
		{"a transfer in one database", bank.State{PGTotal: 50, MyTotal: 50, PGTransfers: 1, OnlyPG: []string{"t1"}}, -1,
			[]string{"ATOMICITY VIOLATED", "  only in postgres: t1"}, ErrViolated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := printState(&out, tt.st, tt.want)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("printState: %v, want %v", err, tt.err)
			}
			for _, l := range tt.lines {
				if !strings.Contains(out.String(), l) {
					t.Errorf("output lacks %q:\n%s", l, out.String())
				}
			}
		})
	}
}

// A run whose transfers abort for a setup reason says why, by reason with
// an example, and brokenSetup judges it; contention and insufficient funds
// alone do not.
func TestBrokenSetup(t *testing.T) {
	refused := &xa.Error{Outcome: xa.Aborted, Op: xa.OpPrepare, Resource: "pg", Err: errors.New("prepared transactions are disabled\nHINT: set max_prepared_transactions")}
	conflict := &xa.Error{Outcome: xa.Aborted, Op: xa.OpWork, Resource: "pg", Err: drivers.ErrConflict}
	tests := []struct {
		name               string
		committed, noFunds int
		aborts             []error
		want               string // in brokenSetup's answer; "" for none
		lines              []string
	}{
		{"all refused", 0, 0, []error{refused, refused, refused}, "no transfer committed: all 3 of 3", []string{"aborted", "3 prepare-refused, e.g. ", "disabled; HINT: set max_prepared_transactions"}},
		{"half refused", 2, 0, []error{refused, refused}, "2 of 4 transfers aborted for a reason other than", []string{"2 prepare-refused"}},
		{"a few refused", 9, 0, []error{refused}, "", []string{"1 prepare-refused"}},
		{"contention only", 1, 0, []error{conflict, conflict, conflict}, "", []string{"3 conflict"}},
		{"insufficient funds only", 0, 5, nil, "", nil},
		{"nothing tried", 0, 0, nil, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s runStats
			s.committed.Store(int64(tt.committed))
			s.aborted.Store(int64(tt.noFunds))
			s.noFunds.Store(int64(tt.noFunds))
			for _, err := range tt.aborts {
				s.abort(err)
			}
			got := s.brokenSetup()
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("brokenSetup() = %q, want %q", got, tt.want)
			}
			lines := strings.Join(s.reasonLines(), "\n")
			for _, l := range tt.lines {
				if !strings.Contains(lines, l) {
					t.Errorf("reasons %q do not say %q", lines, l)
				}
			}
			if strings.Count(lines, "\n") != max(len(s.reasonLines())-1, 0) {
				t.Errorf("a reason spans lines: %q", lines)
			}
		})
	}
}
