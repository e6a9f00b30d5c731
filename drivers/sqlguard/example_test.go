package sqlguard_test

import (
	"errors"
	"fmt"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/drivers/sqlguard"
)

func ExampleCheck() {
	for _, q := range []string{
		"UPDATE accounts SET balance = balance - 10 WHERE id = 1; SAVEPOINT s",
		"SELECT 'COMMIT'; -- COMMIT",
		"UPDATE accounts SET balance = 0; COMMIT",
	} {
		err := sqlguard.Check(sqlguard.Postgres, q)
		fmt.Println(err == nil, errors.Is(err, sqlguard.ErrTransactionControl), errors.Is(err, drivers.ErrFailed))
	}
	fmt.Println(sqlguard.Check(sqlguard.MySQL, "SELECT 1; /*!XA END 'g','b' */"))
	// Output:
	// true false false
	// true false false
	// false true true
	// sqlguard: transaction control refused in a branch: statement 2 at byte 13 (XA END): XA statements would end, prepare or commit the branch outside the coordinator
}
