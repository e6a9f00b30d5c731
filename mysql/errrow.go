package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync"
)

// database/sql has no way to build an *sql.Row that carries an error, yet
// Branch.QueryRowContext must return one when the branch is no longer
// active (running the query on the pinned session could escape the XA
// transaction: MySQL 8 detaches a prepared branch from its session). So
// errRow runs the query on a private *sql.DB whose connector fails with
// the wanted error, carried in the context; database/sql calls Connect on
// the caller's goroutine and stores the error in the Row. Nothing reaches
// the network.
var (
	errDBOnce sync.Once
	errDB     *sql.DB // created on first use; lives as long as the process (one idle goroutine of database/sql)
)

type errRowKey struct{}

type errConnector struct{}

func (errConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if err, ok := ctx.Value(errRowKey{}).(error); ok {
		return nil, err
	}
	return nil, errors.New("mysql: branch is not active")
}

func (errConnector) Driver() driver.Driver { return errDriver{} }

type errDriver struct{}

func (errDriver) Open(string) (driver.Conn, error) {
	return nil, errors.New("mysql: branch is not active")
}

// errRow returns an *sql.Row whose Scan and Err report err (or ctx's error
// if ctx has already ended).
func errRow(ctx context.Context, err error) *sql.Row {
	errDBOnce.Do(func() {
		errDB = sql.OpenDB(errConnector{})
		errDB.SetMaxIdleConns(0)
	})
	return errDB.QueryRowContext(context.WithValue(ctx, errRowKey{}, err), "-")
}
