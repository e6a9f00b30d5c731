package xa_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/postgres"
	"github.com/xabridge/xabridge/xa"
)

// Label a transaction with the order it belongs to, before the first
// Enlist. The label travels in every branch's XID, so `xabridge list` shows
// "order-123" even for branches a crash left prepared before any decision;
// it is kept with the commit decision and appears in Run's errors, in the
// coordinator's log lines and in spans.
func ExampleTx_SetLabel() {
	ctx := context.Background()
	var coord *xa.Coordinator     // from xa.New
	var ledger *postgres.Resource // one of coord's resources
	orderID := "order-123"
	err := coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		if err := tx.SetLabel(orderID); err != nil {
			return err // an invalid label is refused, never truncated
		}
		l, err := ledger.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		_, err = l.Exec(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", 100, 7)
		return err
	})
	var xe *xa.Error
	if errors.As(err, &xe) {
		fmt.Println("order", xe.Label, "failed:", err)
	}
}

// What a label may be, and how an error of a labelled transaction reads.
func ExampleErrLabel() {
	fmt.Println(drivers.ValidateLabel("order-123/EU#7"))
	fmt.Println(drivers.ValidateLabel("order 123"))
	err := &xa.Error{GTRID: "payments-1.019e7044887b.deadbeef.019e7044fdab", Label: "order-123",
		Outcome: xa.Aborted, Op: xa.OpPrepare, Resource: "wallet", Err: drivers.ErrRefused}
	fmt.Println(err)
	// Output:
	// <nil>
	// label "order 123" has the character ' ' at byte 5: a label may only contain A-Z, a-z, 0-9 and . _ : / # @ + -
	// xa: transaction aborted [order-123 payments-1.019e7044887b.deadbeef.019e7044fdab]: prepare on wallet: branch refused to prepare
}
