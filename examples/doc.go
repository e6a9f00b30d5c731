// Package examples holds recipes for running the data layer a Go service
// already has inside an xabridge global transaction: sqlc (pgx and
// database/sql flavours), GORM, sqlx and pgx.Tx-based repository code. The
// checkout they all implement reserves stock in MariaDB/MySQL and charges a
// ledger in PostgreSQL, atomically. Each recipe is one function to copy;
// examples_test.go runs them all against real servers.
//
// It is a module of its own, so that the ORMs stay out of xabridge's
// go.mod.
package examples
