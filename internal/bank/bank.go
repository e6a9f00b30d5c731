// Package bank is the cross-database money-transfer workload used by the
// demo, the benchmark, selfcheck and the integration tests: accounts on a
// PostgreSQL database and on a MySQL/MariaDB database, and transfers that
// move money between them atomically.
//
// The schema is stable and documented (README "Demo schema"); it is the same
// on both databases so atomicity can be checked with plain SQL:
//
//	xab_demo_accounts(id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)
//	xab_demo_transfers(id VARCHAR(64) PRIMARY KEY, amount BIGINT NOT NULL)
//
// Every committed transfer inserts its id into both databases'
// xab_demo_transfers, so the invariants are: the sum of all balances never
// changes, and every transfer id is in both tables or in neither.
package bank

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/internal/redact"
	"github.com/xabridge/xabridge/mysql"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
)

// ErrInsufficientFunds aborts a transfer whose source account would go
// below zero.
var ErrInsufficientFunds = errors.New("insufficient funds")

// Bank holds the two databases and their xabridge resources.
type Bank struct {
	PGPool *pgxpool.Pool
	MyDB   *sql.DB
	PG     *postgres.Resource
	My     *mysql.Resource

	accounts, transfers string   // table names
	stmts               sync.Map // statement template -> with the table names (q)
}

// DefaultPrefix names the demo's tables: xab_demo_accounts and
// xab_demo_transfers.
const DefaultPrefix = "xab_demo"

// SetPrefix makes the bank use the tables PREFIX_accounts and
// PREFIX_transfers (tests use their own). prefix must match [a-z][a-z0-9_]*
// (at most 40 characters): it becomes part of SQL text.
func (b *Bank) SetPrefix(prefix string) error {
	if len(prefix) == 0 || len(prefix) > 40 || prefix[0] < 'a' || prefix[0] > 'z' {
		return fmt.Errorf("bank: bad table prefix %q", prefix)
	}
	for _, c := range prefix {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("bank: bad table prefix %q", prefix)
		}
	}
	b.accounts, b.transfers = prefix+"_accounts", prefix+"_transfers"
	b.stmts.Clear()
	return nil
}

// q replaces the placeholders ACCOUNTS and TRANSFERS in a statement with
// the bank's table names (validated by SetPrefix). The result is cached:
// building it per call showed up in the benchmark's profile.
func (b *Bank) q(stmt string) string {
	if s, ok := b.stmts.Load(stmt); ok {
		return s.(string)
	}
	s := strings.NewReplacer("ACCOUNTS", b.accounts, "TRANSFERS", b.transfers).Replace(stmt)
	b.stmts.Store(stmt, s)
	return s
}

// Open connects to both databases with pools sized for conns concurrent
// transfers. Close releases them.
func Open(ctx context.Context, pgURL, myURL string, conns int) (*Bank, error) {
	if conns < 4 {
		conns = 4
	}
	pcfg, err := pgxpool.ParseConfig(pgURL)
	if err != nil {
		return nil, fmt.Errorf("postgres URL %s: cannot parse it", redact.URL(pgURL))
	}
	pcfg.MaxConns = int32(conns + 2)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	mcfg, err := mysql.ParseURL(myURL)
	if err != nil {
		pool.Close()
		return nil, err
	}
	conn, err := mysqldriver.NewConnector(mcfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	// Keep every connection: reconnecting per transaction costs far more
	// than the transaction itself.
	db.SetMaxOpenConns(conns + 2)
	db.SetMaxIdleConns(conns + 2)
	if err := db.PingContext(ctx); err != nil {
		pool.Close()
		db.Close()
		return nil, fmt.Errorf("mysql: %w", err)
	}
	b := &Bank{PGPool: pool, MyDB: db, PG: postgres.New("pg", pool), My: mysql.New("mysql", db)}
	_ = b.SetPrefix(DefaultPrefix)
	return b, nil
}

// Close releases both pools.
func (b *Bank) Close() {
	b.PGPool.Close()
	b.MyDB.Close()
}

// Setup (re)creates the demo tables on both databases with n accounts of
// balance each, numbered 1..n. Existing demo tables are dropped.
func (b *Bank) Setup(ctx context.Context, n int, balance int64) error {
	for _, q := range []string{
		b.q("DROP TABLE IF EXISTS ACCOUNTS"),
		b.q("DROP TABLE IF EXISTS TRANSFERS"),
		b.q("CREATE TABLE ACCOUNTS (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"),
		b.q("CREATE TABLE TRANSFERS (id VARCHAR(64) PRIMARY KEY, amount BIGINT NOT NULL)"),
	} {
		if _, err := b.PGPool.Exec(ctx, q); err != nil {
			return fmt.Errorf("postgres: %s: %w", q, err)
		}
		if _, err := b.MyDB.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("mysql: %s: %w", q, err)
		}
	}
	if _, err := b.PGPool.Exec(ctx,
		b.q("INSERT INTO ACCOUNTS (id, balance) SELECT g, $1 FROM generate_series(1, $2) g"), balance, n); err != nil {
		return fmt.Errorf("postgres: filling accounts: %w", err)
	}
	// MariaDB has no generate_series; insert in chunks.
	for start := 1; start <= n; start += 500 {
		q := b.q("INSERT INTO ACCOUNTS (id, balance) VALUES ")
		var args []any
		for id := start; id < start+500 && id <= n; id++ {
			if id > start {
				q += ","
			}
			q += "(?, ?)"
			args = append(args, id, balance)
		}
		if _, err := b.MyDB.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("mysql: filling accounts: %w", err)
		}
	}
	return nil
}

// Transfer moves money between a PostgreSQL account and a MySQL account.
// A positive Amount moves it from PG to MySQL, a negative one back.
type Transfer struct {
	PGAccount int64
	MyAccount int64
	Amount    int64
}

// Do runs t as one global transaction. The transfer id is the transaction's
// global id, so it can be found in the log and in both databases.
func (b *Bank) Do(ctx context.Context, c *xa.Coordinator, t Transfer) (id string, err error) {
	err = c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		id = tx.GlobalID().String()
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		// PostgreSQL first, always: a fixed lock order across the two
		// databases means two transfers can never wait on each other in a
		// cycle that spans both (which neither database could detect).
		tag, err := pg.Exec(ctx, b.q("UPDATE ACCOUNTS SET balance = balance - $1 WHERE id = $2 AND balance - $1 >= 0"), t.Amount, t.PGAccount)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return ErrInsufficientFunds
		}
		if _, err := pg.Exec(ctx, b.q("INSERT INTO TRANSFERS (id, amount) VALUES ($1, $2)"), id, t.Amount); err != nil {
			return err
		}
		res, err := my.ExecContext(ctx, b.q("UPDATE ACCOUNTS SET balance = balance + ? WHERE id = ? AND balance + ? >= 0"), t.Amount, t.MyAccount, t.Amount)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return ErrInsufficientFunds
		}
		_, err = my.ExecContext(ctx, b.q("INSERT INTO TRANSFERS (id, amount) VALUES (?, ?)"), id, t.Amount)
		return err
	})
	return id, err
}

// DoBaseline runs t as two independent local commits, PostgreSQL then
// MySQL: the same statements without atomicity. It is the benchmark's
// baseline; a crash between the two commits loses money.
func (b *Bank) DoBaseline(ctx context.Context, id string, t Transfer) error {
	ptx, err := b.PGPool.Begin(ctx)
	if err != nil {
		return err
	}
	tag, err := ptx.Exec(ctx, b.q("UPDATE ACCOUNTS SET balance = balance - $1 WHERE id = $2 AND balance - $1 >= 0"), t.Amount, t.PGAccount)
	if err == nil && tag.RowsAffected() != 1 {
		err = ErrInsufficientFunds
	}
	if err == nil {
		_, err = ptx.Exec(ctx, b.q("INSERT INTO TRANSFERS (id, amount) VALUES ($1, $2)"), id, t.Amount)
	}
	if err != nil {
		_ = ptx.Rollback(ctx)
		return err
	}
	if err := ptx.Commit(ctx); err != nil {
		return err
	}
	mtx, err := b.MyDB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	res, err := mtx.ExecContext(ctx, b.q("UPDATE ACCOUNTS SET balance = balance + ? WHERE id = ?"), t.Amount, t.MyAccount)
	if err == nil {
		if n, _ := res.RowsAffected(); n != 1 {
			err = fmt.Errorf("mysql account %d not found", t.MyAccount)
		}
	}
	if err == nil {
		_, err = mtx.ExecContext(ctx, b.q("INSERT INTO TRANSFERS (id, amount) VALUES (?, ?)"), id, t.Amount)
	}
	if err != nil {
		_ = mtx.Rollback()
		return err
	}
	return mtx.Commit()
}

// State is what the two databases hold, for the invariant check.
type State struct {
	PGTotal, MyTotal         int64
	PGAccounts, MyAccounts   int
	PGTransfers, MyTransfers int
	// OnlyPG and OnlyMy are transfer ids present in one database only:
	// each is an atomicity violation.
	OnlyPG, OnlyMy []string
	// AmountMismatch lists transfer ids whose amounts differ.
	AmountMismatch []string
	// NetPG is the sum of transfer amounts recorded on PostgreSQL (money
	// that left PG accounts).
	NetPG, NetMy int64
}

// Total is all the money in both databases.
func (s State) Total() int64 { return s.PGTotal + s.MyTotal }

// Violations counts atomicity violations found.
func (s State) Violations() int { return len(s.OnlyPG) + len(s.OnlyMy) + len(s.AmountMismatch) }

// Check reads both databases.
func (b *Bank) Check(ctx context.Context) (State, error) {
	var s State
	if err := b.PGPool.QueryRow(ctx, b.q("SELECT COALESCE(SUM(balance),0), COUNT(*) FROM ACCOUNTS")).Scan(&s.PGTotal, &s.PGAccounts); err != nil {
		return s, fmt.Errorf("postgres: %w", err)
	}
	if err := b.MyDB.QueryRowContext(ctx, b.q("SELECT COALESCE(SUM(balance),0), COUNT(*) FROM ACCOUNTS")).Scan(&s.MyTotal, &s.MyAccounts); err != nil {
		return s, fmt.Errorf("mysql: %w", err)
	}
	pg := map[string]int64{}
	rows, err := b.PGPool.Query(ctx, b.q("SELECT id, amount FROM TRANSFERS"))
	if err != nil {
		return s, fmt.Errorf("postgres: %w", err)
	}
	for rows.Next() {
		var id string
		var amt int64
		if err := rows.Scan(&id, &amt); err != nil {
			rows.Close()
			return s, err
		}
		pg[id] = amt
		s.NetPG += amt
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return s, err
	}
	my := map[string]int64{}
	mrows, err := b.MyDB.QueryContext(ctx, b.q("SELECT id, amount FROM TRANSFERS"))
	if err != nil {
		return s, fmt.Errorf("mysql: %w", err)
	}
	defer mrows.Close()
	for mrows.Next() {
		var id string
		var amt int64
		if err := mrows.Scan(&id, &amt); err != nil {
			return s, err
		}
		my[id] = amt
		s.NetMy += amt
	}
	if err := mrows.Err(); err != nil {
		return s, err
	}
	s.PGTransfers, s.MyTransfers = len(pg), len(my)
	for id, amt := range pg {
		m, ok := my[id]
		switch {
		case !ok:
			s.OnlyPG = append(s.OnlyPG, id)
		case m != amt:
			s.AmountMismatch = append(s.AmountMismatch, id)
		}
	}
	for id := range my {
		if _, ok := pg[id]; !ok {
			s.OnlyMy = append(s.OnlyMy, id)
		}
	}
	sort.Strings(s.OnlyPG)
	sort.Strings(s.OnlyMy)
	sort.Strings(s.AmountMismatch)
	return s, nil
}

// Drop removes the bank's tables from both databases.
func (b *Bank) Drop(ctx context.Context) error {
	var errs []error
	for _, q := range []string{b.q("DROP TABLE IF EXISTS ACCOUNTS"), b.q("DROP TABLE IF EXISTS TRANSFERS")} {
		if _, err := b.PGPool.Exec(ctx, q); err != nil {
			errs = append(errs, fmt.Errorf("postgres: %w", err))
		}
		if _, err := b.MyDB.ExecContext(ctx, q); err != nil {
			errs = append(errs, fmt.Errorf("mysql: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Balances returns the balance of one account on each database.
func (b *Bank) Balances(ctx context.Context, pgAccount, myAccount int64) (pg, my int64, err error) {
	if err := b.PGPool.QueryRow(ctx, b.q("SELECT balance FROM ACCOUNTS WHERE id = $1"), pgAccount).Scan(&pg); err != nil {
		return 0, 0, fmt.Errorf("postgres: %w", err)
	}
	if err := b.MyDB.QueryRowContext(ctx, b.q("SELECT balance FROM ACCOUNTS WHERE id = ?"), myAccount).Scan(&my); err != nil {
		return 0, 0, fmt.Errorf("mysql: %w", err)
	}
	return pg, my, nil
}

// Table returns the name of the bank's accounts ("accounts") or transfers
// ("transfers") table.
func (b *Bank) Table(which string) string {
	if which == "transfers" {
		return b.transfers
	}
	return b.accounts
}
