package sqlview

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"slices"
	"sync"
	"testing"
)

// recorder is a Backend that records the statements it is sent. Only the
// view's own bookkeeping is tested here; the adapters' tests run the view
// against real servers.
type recorder struct {
	mu    sync.Mutex
	stmts []string
}

func (r *recorder) Exec(_ context.Context, query string, _ []any) (driver.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stmts = append(r.stmts, query)
	return driver.RowsAffected(0), nil
}

func (r *recorder) Query(context.Context, string, []any) (driver.Rows, error) {
	return nil, errors.New("no queries here")
}

func TestSavepointBookkeeping(t *testing.T) {
	ctx := t.Context()
	rec := &recorder{}
	v := New(rec, "sp_")
	db := v.DB()

	outer, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := db.BeginTx(ctx, nil) // another connection of the view, same branch
	if err != nil {
		t.Fatal(err)
	}
	if err := outer.Commit(); err != nil { // RELEASE sp_1 releases sp_2 on the server too
		t.Fatal(err)
	}
	if err := inner.Rollback(); !errors.Is(err, ErrSavepoint) {
		t.Errorf("rollback of a savepoint released with its parent: %v, want ErrSavepoint", err)
	}
	third, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := third.Rollback(); err != nil {
		t.Fatal(err)
	}
	want := []string{"SAVEPOINT sp_1", "SAVEPOINT sp_2", "RELEASE SAVEPOINT sp_1", "SAVEPOINT sp_3", "ROLLBACK TO SAVEPOINT sp_3"}
	if !slices.Equal(rec.stmts, want) {
		t.Errorf("statements %q, want %q", rec.stmts, want)
	}

	v.Close()
	if _, err := db.ExecContext(ctx, "SELECT 1"); err == nil {
		t.Error("the view works after Close")
	}
	if err := v.DB().PingContext(ctx); err == nil {
		t.Error("DB after Close is open")
	}
}

func TestNamedArgumentsRefused(t *testing.T) {
	rec := &recorder{}
	v := New(rec, "sp_")
	defer v.Close()
	if _, err := v.DB().ExecContext(t.Context(), "UPDATE t SET v = @v", sqlNamed("v", 1)); err == nil {
		t.Error("a named argument was accepted")
	}
	if len(rec.stmts) != 0 {
		t.Errorf("sent %q", rec.stmts)
	}
}

func sqlNamed(name string, v any) any { return sql.Named(name, v) }

// checker is a recorder whose Check refuses one text.
type checker struct {
	recorder
	refuse string
}

var errRefused = errors.New("refused")

func (c *checker) Check(query string) error {
	if query == c.refuse {
		return errRefused
	}
	return nil
}

// A backend that is a Checker (but not a Preparer) vets a statement's text
// at PrepareContext; nothing is sent.
func TestPrepareChecks(t *testing.T) {
	ctx := t.Context()
	c := &checker{refuse: "COMMIT"}
	db := New(c, "sp_").DB()
	if _, err := db.PrepareContext(ctx, "COMMIT"); !errors.Is(err, errRefused) {
		t.Fatalf("PrepareContext(COMMIT) = %v, want the Checker's refusal", err)
	}
	st, err := db.PrepareContext(ctx, "UPDATE t SET v = 1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	if want := []string{"UPDATE t SET v = 1"}; !slices.Equal(c.stmts, want) {
		t.Errorf("sent %q, want %q", c.stmts, want)
	}
}
