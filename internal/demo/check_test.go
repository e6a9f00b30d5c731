package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
)

// check reads the two databases one after the other: another coordinator's
// transfer whose phase 2 runs between the reads shows in one database
// only. Such a state that resolves itself is no violation; one that stays
// is, after checkSettle.
func TestCheckRereadsTransientState(t *testing.T) {
	ctx := context.Background()
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var r [3]byte
	_, _ = rand.Read(r[:])
	if err := b.SetPrefix("xab_ck_" + hex.EncodeToString(r[:])); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 2, 100); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Drop(context.Background()) }()
	insert := func(id string, pg, my bool) {
		t.Helper()
		if pg {
			if _, err := b.PGPool.Exec(ctx, "INSERT INTO "+b.Table("transfers")+" (id, amount) VALUES ($1, 5)", id); err != nil {
				t.Fatal(err)
			}
		}
		if my {
			if _, err := b.MyDB.ExecContext(ctx, "INSERT INTO "+b.Table("transfers")+" (id, amount) VALUES (?, 5)", id); err != nil {
				t.Fatal(err)
			}
		}
	}

	// In PostgreSQL now, in MySQL 300ms later: atomic once re-read.
	insert("t-late", true, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond) // the other side's commit, late
		insert("t-late", false, true)
	}()
	// The servers are shared with other packages' tests, whose branches
	// may be prepared right now: this test's tables have none.
	none := func(context.Context) (int, error) { return 0, nil }
	var out bytes.Buffer
	if err := checkWith(ctx, &out, b, -1, none); err != nil {
		t.Errorf("check of a transfer whose second side came 300ms late: %v\n%s", err, out.String())
	}
	<-done

	// In PostgreSQL only, for good: a violation, reported after checkSettle.
	insert("t-lost", true, false)
	start := time.Now()
	out.Reset()
	if err := checkWith(ctx, &out, b, -1, none); !errors.Is(err, ErrViolated) {
		t.Errorf("check of a transfer only in PostgreSQL: %v, want ErrViolated\n%s", err, out.String())
	}
	if took := time.Since(start); took < checkSettle {
		t.Errorf("the violation was reported after %s, before re-reading for %s", took, checkSettle)
	}
	if !bytes.Contains(out.Bytes(), []byte("only in postgres: t-lost")) {
		t.Errorf("check does not name the transfer:\n%s", out.String())
	}
}
