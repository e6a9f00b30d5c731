package examples

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jmoiron/sqlx"
	"github.com/xabridge/xabridge/examples/sqlc/ledger"
	"github.com/xabridge/xabridge/examples/sqlc/ledgersql"
	"github.com/xabridge/xabridge/examples/sqlc/stock"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
	"gorm.io/gorm"
)

// Order is one checkout: qty items of SKU reserved in MariaDB, Amount
// charged to Account in the PostgreSQL ledger.
type Order struct {
	ID      string
	SKU     string
	Qty     int64
	Account int64
	Amount  int64
	Coupon  string // optional; a coupon already used is skipped, not fatal (GORM recipe)
}

// The business errors the recipes return from the callback: returning an
// error rolls back both databases.
var (
	ErrOutOfStock        = errors.New("out of stock")
	ErrInsufficientFunds = errors.New("insufficient funds")
)

// Shop is what the service sets up once: the coordinator and its two
// resources.
type Shop struct {
	Coord  *xa.Coordinator
	Ledger *postgres.Resource // PostgreSQL, on the service's *pgxpool.Pool
	Stock  *mysql.Resource    // MariaDB/MySQL, on the service's *sql.DB
}

// CheckoutSqlc: sqlc, pgx flavour on PostgreSQL, database/sql flavour on
// MariaDB. Both handles are sqlc DBTX values as they are.
func CheckoutSqlc(ctx context.Context, s *Shop, o Order) error {
	return s.Coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := s.Ledger.Enlist(ctx, tx) // *postgres.Branch: a pgx-style DBTX and a pgx.Tx
		if err != nil {
			return err
		}
		w, err := s.Stock.Enlist(ctx, tx) // *mysql.Branch: a database/sql-style DBTX
		if err != nil {
			return err
		}
		n, err := stock.New(w).Reserve(ctx, stock.ReserveParams{Qty: o.Qty, Sku: o.SKU})
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrOutOfStock
		}
		if err := stock.New(w).InsertReservation(ctx, stock.InsertReservationParams{OrderID: o.ID, Sku: o.SKU, Qty: o.Qty}); err != nil {
			return err
		}
		// Queries built once on the pool elsewhere move onto the branch with
		// WithTx, which takes a pgx.Tx: the handle is one.
		q := ledger.New(nil).WithTx(l)
		n, err = q.ChargeAccount(ctx, ledger.ChargeAccountParams{ID: o.Account, Amount: o.Amount})
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrInsufficientFunds
		}
		return q.InsertEntry(ctx, ledger.InsertEntryParams{OrderID: o.ID, AccountID: o.Account, Amount: o.Amount})
	})
}

// CheckoutSqlcDatabaseSQL: sqlc's database/sql flavour on both engines,
// with prepared queries (emit_prepared_queries) on MariaDB: they are
// prepared on the branch's session and closed with the branch.
func CheckoutSqlcDatabaseSQL(ctx context.Context, s *Shop, o Order) error {
	return s.Coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := s.Ledger.Enlist(ctx, tx) // also a database/sql-style DBTX
		if err != nil {
			return err
		}
		w, err := s.Stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		sq, err := stock.Prepare(ctx, w)
		if err != nil {
			return err
		}
		defer sq.Close()
		n, err := sq.Reserve(ctx, stock.ReserveParams{Qty: o.Qty, Sku: o.SKU})
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrOutOfStock
		}
		if err := sq.InsertReservation(ctx, stock.InsertReservationParams{OrderID: o.ID, Sku: o.SKU, Qty: o.Qty}); err != nil {
			return err
		}
		lq := ledgersql.New(l)
		n, err = lq.ChargeAccount(ctx, ledgersql.ChargeAccountParams{ID: o.Account, Amount: o.Amount})
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrInsufficientFunds
		}
		return lq.InsertEntry(ctx, ledgersql.InsertEntryParams{OrderID: o.ID, AccountID: o.Account, Amount: o.Amount})
	})
}

// ChargeLedger is a repository function of the kind services already have:
// it takes a pgx.Tx.
func ChargeLedger(ctx context.Context, tx pgx.Tx, orderID string, account, amount int64) error {
	tag, err := tx.Exec(ctx, "UPDATE ledger_accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2", account, amount)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrInsufficientFunds
	}
	_, err = tx.Exec(ctx, "INSERT INTO ledger_entries (order_id, account_id, amount) VALUES ($1, $2, $3)", orderID, account, amount)
	return err
}

// CheckoutPgxTx: pgx.Tx-based code. The handle is a pgx.Tx; pgx.BeginFunc
// on it runs in a savepoint, so a failure inside only undoes that part
// (here: an optional loyalty bonus whose failure must not stop the order).
func CheckoutPgxTx(ctx context.Context, s *Shop, o Order) error {
	return s.Coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := s.Ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		w, err := s.Stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		res, err := w.ExecContext(ctx, "UPDATE stock SET qty = qty - ? WHERE sku = ? AND qty >= ?", o.Qty, o.SKU, o.Qty)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrOutOfStock
		}
		if _, err := w.ExecContext(ctx, "INSERT INTO reservations (order_id, sku, qty) VALUES (?, ?, ?)", o.ID, o.SKU, o.Qty); err != nil {
			return err
		}
		if err := ChargeLedger(ctx, l, o.ID, o.Account, o.Amount); err != nil {
			return err
		}
		// Best effort, in a savepoint: a duplicate bonus fails, is rolled
		// back to the savepoint, and the order still commits.
		_ = pgx.BeginFunc(ctx, l, func(sp pgx.Tx) error {
			_, err := sp.Exec(ctx, "INSERT INTO ledger_bonus (account_id) VALUES ($1)", o.Account)
			return err
		})
		return nil
	})
}

// StockItem, Reservation, Account, Entry and CouponUse are the GORM models.
type StockItem struct {
	SKU string `gorm:"column:sku;primaryKey"`
	Qty int64
}

// TableName names StockItem's table.
func (StockItem) TableName() string { return "stock" }

// Reservation is a row of reservations (MariaDB).
type Reservation struct {
	OrderID string
	SKU     string `gorm:"column:sku"`
	Qty     int64
}

// Entry is a row of ledger_entries (PostgreSQL).
type Entry struct {
	OrderID   string
	AccountID int64
	Amount    int64
}

// TableName names Entry's table.
func (Entry) TableName() string { return "ledger_entries" }

// CouponUse is a row of coupon_uses (MariaDB), unique per coupon.
type CouponUse struct {
	Coupon  string `gorm:"primaryKey"`
	OrderID string
}

// OnBranch returns a *gorm.DB that runs on a branch handle: base's models,
// dialect and callbacks (base is the service's *gorm.DB, opened once on its
// pool), the branch's session. Cheap: no gorm.Open per transaction. Both
// handles are gorm.ConnPool values and TxBeginners, so Transaction on the
// result (and nested in it) is a savepoint. SkipDefaultTransaction saves
// GORM's per-write savepoint: the global transaction is already atomic.
func OnBranch(ctx context.Context, base *gorm.DB, branch gorm.ConnPool) *gorm.DB {
	db := base.Session(&gorm.Session{NewDB: true, Context: ctx, SkipDefaultTransaction: true})
	db.Statement.ConnPool = branch
	return db
}

// CheckoutGORM: GORM on both engines, with nested Transaction.
func CheckoutGORM(ctx context.Context, s *Shop, pgGorm, myGorm *gorm.DB, o Order) error {
	return s.Coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := s.Ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		w, err := s.Stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		sdb, ldb := OnBranch(ctx, myGorm, w), OnBranch(ctx, pgGorm, l)
		err = sdb.Transaction(func(t *gorm.DB) error { // a savepoint
			res := t.Model(&StockItem{}).Where("sku = ? AND qty >= ?", o.SKU, o.Qty).
				Update("qty", gorm.Expr("qty - ?", o.Qty))
			if res.Error != nil {
				return res.Error
			}
			if res.RowsAffected == 0 {
				return ErrOutOfStock
			}
			if o.Coupon != "" {
				// Nested: a coupon already used rolls back to its own
				// savepoint; the reservation goes on without it.
				_ = t.Transaction(func(t2 *gorm.DB) error {
					return t2.Create(&CouponUse{Coupon: o.Coupon, OrderID: o.ID}).Error
				})
			}
			return t.Create(&Reservation{OrderID: o.ID, SKU: o.SKU, Qty: o.Qty}).Error
		})
		if err != nil {
			return err
		}
		return ldb.Transaction(func(t *gorm.DB) error {
			res := t.Table("ledger_accounts").Where("id = ? AND balance >= ?", o.Account, o.Amount).
				Update("balance", gorm.Expr("balance - ?", o.Amount))
			if res.Error != nil {
				return res.Error
			}
			if res.RowsAffected == 0 {
				return ErrInsufficientFunds
			}
			return t.Create(&Entry{OrderID: o.ID, AccountID: o.Account, Amount: o.Amount}).Error
		})
	})
}

// CheckoutSqlx: sqlx on both engines, through each handle's database/sql
// view (DB), wrapped with sqlx.NewDb and the driver name that picks the
// bind style.
func CheckoutSqlx(ctx context.Context, s *Shop, o Order) error {
	return s.Coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		l, err := s.Ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		w, err := s.Stock.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		lx, wx := sqlx.NewDb(l.DB(), "pgx"), sqlx.NewDb(w.DB(), "mysql")

		var item struct {
			SKU string `db:"sku"`
			Qty int64  `db:"qty"`
		}
		if err := sqlx.GetContext(ctx, wx, &item, "SELECT sku, qty FROM stock WHERE sku = ? FOR UPDATE", o.SKU); err != nil {
			return fmt.Errorf("stock %s: %w", o.SKU, err)
		}
		if item.Qty < o.Qty {
			return ErrOutOfStock
		}
		if _, err := wx.ExecContext(ctx, "UPDATE stock SET qty = qty - ? WHERE sku = ?", o.Qty, o.SKU); err != nil {
			return err
		}
		r := Reservation{OrderID: o.ID, SKU: o.SKU, Qty: o.Qty}
		if _, err := wx.NamedExecContext(ctx, "INSERT INTO reservations (order_id, sku, qty) VALUES (:orderid, :sku, :qty)", r); err != nil {
			return err
		}
		var balances []int64
		if err := sqlx.SelectContext(ctx, lx, &balances, "SELECT balance FROM ledger_accounts WHERE id = $1 FOR UPDATE", o.Account); err != nil {
			return err
		}
		if len(balances) != 1 || balances[0] < o.Amount {
			return ErrInsufficientFunds
		}
		if _, err := lx.ExecContext(ctx, "UPDATE ledger_accounts SET balance = balance - $1 WHERE id = $2", o.Amount, o.Account); err != nil {
			return err
		}
		e := Entry{OrderID: o.ID, AccountID: o.Account, Amount: o.Amount}
		_, err = lx.NamedExecContext(ctx, "INSERT INTO ledger_entries (order_id, account_id, amount) VALUES (:orderid, :accountid, :amount)", e)
		return err
	})
}
