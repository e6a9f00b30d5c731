package examples_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/examples"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
	gormmysql "gorm.io/driver/mysql"
	gormpg "gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	mysqldriver "github.com/go-sql-driver/mysql"
)

// world is one test's shop on private tables: a PostgreSQL schema and a
// MariaDB database of its own, so that the recipes' fixed table names do
// not collide with anything.
type world struct {
	t      testing.TB
	shop   *examples.Shop
	pool   *pgxpool.Pool
	my     *sql.DB
	pgGorm *gorm.DB
	myGorm *gorm.DB
}

func servers(t testing.TB) (pgURL, myURL string) {
	t.Helper()
	pgURL, myURL = os.Getenv("XABRIDGE_PG"), os.Getenv("XABRIDGE_MYSQL")
	if pgURL == "" || myURL == "" {
		t.Fatal("XABRIDGE_PG and XABRIDGE_MYSQL must point at servers (scripts/test sets them; or eval \"$(scripts/devdb env)\")")
	}
	return pgURL, myURL
}

func newWorld(t testing.TB) *world { return newWorldConns(t, 8) }

// newWorldConns is newWorld with pools of conns connections on each engine.
func newWorldConns(t testing.TB, conns int) *world {
	t.Helper()
	ctx := t.Context()
	pgURL, myURL := servers(t)
	name := fmt.Sprintf("xab_ex_%08x", rand.Uint32())

	// PostgreSQL: a schema of our own, on the search_path of the pool.
	admin, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	mustPG(t, admin, "CREATE SCHEMA "+name)
	t.Cleanup(func() { mustPG(t, admin, "DROP SCHEMA "+name+" CASCADE") })
	cfg, err := pgxpool.ParseConfig(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = name
	cfg.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, q := range []string{
		"CREATE TABLE ledger_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
		"CREATE TABLE ledger_entries (order_id TEXT NOT NULL, account_id BIGINT NOT NULL, amount BIGINT NOT NULL)",
		"CREATE TABLE ledger_bonus (account_id BIGINT PRIMARY KEY)",
	} {
		mustPG(t, pool, q)
	}

	// MariaDB: a database of our own.
	mcfg, err := mysql.ParseURL(myURL)
	if err != nil {
		t.Fatal(err)
	}
	root := openMy(t, mcfg)
	mustMy(t, root, "CREATE DATABASE "+name)
	t.Cleanup(func() { mustMy(t, root, "DROP DATABASE "+name) })
	mcfg = mcfg.Clone()
	mcfg.DBName = name
	my := openMy(t, mcfg)
	my.SetMaxOpenConns(conns)
	my.SetMaxIdleConns(conns)
	for _, q := range []string{
		"CREATE TABLE stock (sku VARCHAR(32) PRIMARY KEY, qty BIGINT NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE reservations (order_id VARCHAR(64) NOT NULL, sku VARCHAR(32) NOT NULL, qty BIGINT NOT NULL) ENGINE=InnoDB",
		"CREATE TABLE coupon_uses (coupon VARCHAR(32) PRIMARY KEY, order_id VARCHAR(64) NOT NULL) ENGINE=InnoDB",
	} {
		mustMy(t, my, q)
	}

	w := &world{t: t, pool: pool, my: my}
	w.shop = &examples.Shop{Ledger: postgres.New("ledger", pool), Stock: mysql.New("stock", my)}
	coord, err := xa.New(ctx, xa.Config{NodeID: "examples", LogDir: t.TempDir(), Timeout: 20 * time.Second,
		Resources: []drivers.Resource{w.shop.Ledger, w.shop.Stock}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = coord.Close() })
	w.shop.Coord = coord

	// The service's *gorm.DB values, opened once on its own pools.
	// (One *gorm.Config each: gorm.Open stores the dialector in it.)
	quiet := func() *gorm.Config { return &gorm.Config{Logger: logger.Default.LogMode(logger.Silent)} }
	if w.pgGorm, err = gorm.Open(gormpg.New(gormpg.Config{Conn: stdlib.OpenDBFromPool(pool)}), quiet()); err != nil {
		t.Fatal(err)
	}
	if w.myGorm, err = gorm.Open(gormmysql.New(gormmysql.Config{Conn: my}), quiet()); err != nil {
		t.Fatal(err)
	}
	return w
}

func openMy(t testing.TB, cfg *mysqldriver.Config) *sql.DB {
	t.Helper()
	c, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(8)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func mustPG(t testing.TB, pool *pgxpool.Pool, q string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func mustMy(t testing.TB, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// reset puts 10 of sku-1 in stock and 1000 on account 1, nothing else.
func (w *world) reset() {
	for _, q := range []string{"DELETE FROM ledger_entries", "DELETE FROM ledger_bonus", "DELETE FROM ledger_accounts",
		"INSERT INTO ledger_accounts VALUES (1, 1000)"} {
		mustPG(w.t, w.pool, q)
	}
	for _, q := range []string{"DELETE FROM reservations", "DELETE FROM coupon_uses", "DELETE FROM stock",
		"INSERT INTO stock VALUES ('sku-1', 10)"} {
		mustMy(w.t, w.my, q)
	}
}

// state is what both databases hold.
type state struct{ qty, reservations, balance, entries int64 }

func (w *world) state() state {
	w.t.Helper()
	ctx := context.Background()
	var s state
	for q, dst := range map[string]*int64{
		"SELECT qty FROM stock WHERE sku = 'sku-1'": &s.qty,
		"SELECT COUNT(*) FROM reservations":         &s.reservations,
	} {
		if err := w.my.QueryRowContext(ctx, q).Scan(dst); err != nil {
			w.t.Fatalf("%s: %v", q, err)
		}
	}
	for q, dst := range map[string]*int64{
		"SELECT balance FROM ledger_accounts WHERE id = 1": &s.balance,
		"SELECT COUNT(*) FROM ledger_entries":              &s.entries,
	} {
		if err := w.pool.QueryRow(ctx, q).Scan(dst); err != nil {
			w.t.Fatalf("%s: %v", q, err)
		}
	}
	return s
}

// Every recipe, on both engines: a checkout commits in both databases; one
// that fails on either side (out of stock in MariaDB; insufficient funds in
// PostgreSQL, after the stock was reserved) leaves both untouched.
func TestRecipes(t *testing.T) {
	w := newWorld(t)
	recipes := []struct {
		name string
		run  func(context.Context, *examples.Shop, examples.Order) error
	}{
		{"sqlc", examples.CheckoutSqlc},
		{"sqlc-database-sql", examples.CheckoutSqlcDatabaseSQL},
		{"pgx.Tx", examples.CheckoutPgxTx},
		{"gorm", func(ctx context.Context, s *examples.Shop, o examples.Order) error {
			return examples.CheckoutGORM(ctx, s, w.pgGorm, w.myGorm, o)
		}},
		{"sqlx", examples.CheckoutSqlx},
	}
	for _, r := range recipes {
		t.Run(r.name, func(t *testing.T) {
			w.t = t
			w.reset()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			order := func(id string, qty, amount int64) examples.Order {
				return examples.Order{ID: id, SKU: "sku-1", Qty: qty, Account: 1, Amount: amount, Coupon: "WELCOME"}
			}
			if err := r.run(ctx, w.shop, order("o-1", 2, 100)); err != nil {
				t.Fatalf("checkout: %v", err)
			}
			if got, want := w.state(), (state{qty: 8, reservations: 1, balance: 900, entries: 1}); got != want {
				t.Fatalf("after a checkout: %+v, want %+v", got, want)
			}
			// The second order reuses the coupon (GORM) and the bonus
			// (pgx.Tx): their savepoints roll back, the order commits.
			if err := r.run(ctx, w.shop, order("o-2", 1, 50)); err != nil {
				t.Fatalf("second checkout: %v", err)
			}
			want := state{qty: 7, reservations: 2, balance: 850, entries: 2}
			if got := w.state(); got != want {
				t.Fatalf("after a second checkout: %+v, want %+v", got, want)
			}
			err := r.run(ctx, w.shop, order("o-3", 100, 10))
			if !errors.Is(err, examples.ErrOutOfStock) || !errors.Is(err, xa.ErrAborted) {
				t.Fatalf("out of stock: %v", err)
			}
			err = r.run(ctx, w.shop, order("o-4", 1, 1_000_000))
			if !errors.Is(err, examples.ErrInsufficientFunds) || !errors.Is(err, xa.ErrAborted) {
				t.Fatalf("insufficient funds: %v", err)
			}
			if got := w.state(); got != want {
				t.Fatalf("after two failed checkouts: %+v, want %+v (unchanged)", got, want)
			}
		})
	}
}

// GORM opened on a branch's database/sql view, per transaction, with
// PrepareStmt: gorm.Open works (the view is a *sql.DB), prepared statements
// live and die with the branch, and Transaction nests as savepoints.
func TestGORMOpenOnBranchWithPrepareStmt(t *testing.T) {
	w := newWorld(t)
	w.reset()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cfg := func() *gorm.Config { // one each: gorm.Open stores the dialector in it
		return &gorm.Config{PrepareStmt: true, SkipDefaultTransaction: true, Logger: logger.Default.LogMode(logger.Silent)}
	}
	err := w.shop.Coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := w.shop.Ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		s, err := w.shop.Stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		ldb, err := gorm.Open(gormpg.New(gormpg.Config{Conn: l.DB()}), cfg())
		if err != nil {
			return fmt.Errorf("gorm.Open on the PostgreSQL branch: %w", err)
		}
		sdb, err := gorm.Open(gormmysql.New(gormmysql.Config{Conn: s.DB(), SkipInitializeWithVersion: true}), cfg())
		if err != nil {
			return fmt.Errorf("gorm.Open on the MariaDB branch: %w", err)
		}
		for _, db := range []*gorm.DB{ldb.WithContext(ctx), sdb.WithContext(ctx)} {
			err := db.Transaction(func(t1 *gorm.DB) error {
				return t1.Transaction(func(t2 *gorm.DB) error { return errors.New("undo me") })
			})
			if err == nil || err.Error() != "undo me" {
				return fmt.Errorf("nested Transaction: %v", err)
			}
		}
		if err := sdb.WithContext(ctx).Transaction(func(t1 *gorm.DB) error {
			return t1.Create(&examples.Reservation{OrderID: "g-1", SKU: "sku-1", Qty: 1}).Error
		}); err != nil {
			return err
		}
		return ldb.WithContext(ctx).Transaction(func(t1 *gorm.DB) error {
			return t1.Create(&examples.Entry{OrderID: "g-1", AccountID: 1, Amount: 1}).Error
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.state(); got.reservations != 1 || got.entries != 1 {
		t.Fatalf("%+v: want one reservation and one entry", got)
	}
}
