// Code in the shape sqlc v1.x generates (see db.go).

package stock

import (
	"context"
)

const reserve = `-- name: Reserve :execrows
UPDATE stock SET qty = qty - ? WHERE sku = ? AND qty >= ?
`

// ReserveParams are Reserve's arguments.
type ReserveParams struct {
	Qty int64
	Sku string
}

// Reserve takes qty items of sku if that many are in stock.
func (q *Queries) Reserve(ctx context.Context, arg ReserveParams) (int64, error) {
	var (
		result interface{ RowsAffected() (int64, error) }
		err    error
	)
	if q.reserveStmt != nil {
		result, err = q.reserveStmt.ExecContext(ctx, arg.Qty, arg.Sku, arg.Qty)
	} else {
		result, err = q.db.ExecContext(ctx, reserve, arg.Qty, arg.Sku, arg.Qty)
	}
	if err != nil {
		return 0, err
	}
	return result.RowsAffected()
}

const insertReservation = `-- name: InsertReservation :exec
INSERT INTO reservations (order_id, sku, qty) VALUES (?, ?, ?)
`

// InsertReservationParams are InsertReservation's arguments.
type InsertReservationParams struct {
	OrderID string
	Sku     string
	Qty     int64
}

// InsertReservation records a reservation.
func (q *Queries) InsertReservation(ctx context.Context, arg InsertReservationParams) error {
	_, err := q.db.ExecContext(ctx, insertReservation, arg.OrderID, arg.Sku, arg.Qty)
	return err
}

const getQty = `-- name: GetQty :one
SELECT qty FROM stock WHERE sku = ?
`

// GetQty reads what is in stock.
func (q *Queries) GetQty(ctx context.Context, sku string) (int64, error) {
	row := q.db.QueryRowContext(ctx, getQty, sku)
	var qty int64
	err := row.Scan(&qty)
	return qty, err
}
