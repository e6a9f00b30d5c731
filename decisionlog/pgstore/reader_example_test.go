package pgstore_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xabridge/xabridge/decisionlog/pgstore"
)

// An operator's tool reads the node leases without taking one, and
// without creating the store where there is none.
func ExampleOpenReader() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://xabridge@db.example/payments")
	if err != nil {
		return
	}
	defer pool.Close()
	r, err := pgstore.OpenReader(ctx, pool, pgstore.ReaderOptions{})
	if errors.Is(err, pgstore.ErrNoStore) {
		fmt.Println("no xabridge store in this database")
		return
	}
	if err != nil {
		return
	}
	nodes, _ := r.Nodes(ctx)
	for _, n := range nodes {
		fmt.Println(n.Node, n.Epoch, n.State, n.ExpiresIn)
	}
}
