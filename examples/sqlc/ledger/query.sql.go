// Code in the shape sqlc v1.x generates (see db.go).

package ledger

import (
	"context"
)

const chargeAccount = `-- name: ChargeAccount :execrows
UPDATE ledger_accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2
`

// ChargeAccountParams are ChargeAccount's arguments.
type ChargeAccountParams struct {
	ID     int64
	Amount int64
}

// ChargeAccount takes amount from an account that has it.
func (q *Queries) ChargeAccount(ctx context.Context, arg ChargeAccountParams) (int64, error) {
	result, err := q.db.Exec(ctx, chargeAccount, arg.ID, arg.Amount)
	if err != nil {
		return 0, err
	}
	return result.RowsAffected(), nil
}

const insertEntry = `-- name: InsertEntry :exec
INSERT INTO ledger_entries (order_id, account_id, amount) VALUES ($1, $2, $3)
`

// InsertEntryParams are InsertEntry's arguments.
type InsertEntryParams struct {
	OrderID   string
	AccountID int64
	Amount    int64
}

// InsertEntry records a charge.
func (q *Queries) InsertEntry(ctx context.Context, arg InsertEntryParams) error {
	_, err := q.db.Exec(ctx, insertEntry, arg.OrderID, arg.AccountID, arg.Amount)
	return err
}

const getBalance = `-- name: GetBalance :one
SELECT balance FROM ledger_accounts WHERE id = $1
`

// GetBalance reads an account's balance.
func (q *Queries) GetBalance(ctx context.Context, id int64) (int64, error) {
	row := q.db.QueryRow(ctx, getBalance, id)
	var balance int64
	err := row.Scan(&balance)
	return balance, err
}
