package drivers_test

import (
	"errors"
	"fmt"

	"github.com/xabridge/xabridge/drivers"
)

func ExampleValidateResourceName() {
	for _, name := range []string{"ledger-eu", "my db"} {
		fmt.Println(name, drivers.ValidateResourceName(name))
	}
	// Output:
	// ledger-eu <nil>
	// my db resource name "my db" may only contain letters, digits, '_' and '-'
}

func ExampleJoin() {
	err := drivers.Join(errors.New("rollback on pg failed"), nil, errors.New("ERROR: x\nDETAIL: y"))
	fmt.Println(err)
	// Output: rollback on pg failed; ERROR: x; DETAIL: y
}

func ExampleQuoteID() {
	fmt.Println(drivers.QuoteID("xab1:n.0123:00"))
	fmt.Println(drivers.QuoteID("X'6162',X'01',7"))
	// Output:
	// xab1:n.0123:00
	// "X'6162',X'01',7"
}
