// Package mysql is the xabridge adapter for MySQL and MariaDB, built on
// github.com/go-sql-driver/mysql through database/sql. A branch is an XA
// transaction (XA START … XA END, XA PREPARE, XA COMMIT/ROLLBACK) on one
// *sql.Conn pinned from the application's pool for the branch's lifetime.
//
// # Sessions
//
// MariaDB (10.5 to at least 11.x) and MySQL before 8.0.29 (or with
// xa_detach_on_prepare=OFF) bind a prepared XA branch to the session that
// prepared it: until that session ends, XA COMMIT from any other session
// fails with XAER_NOTA although XA RECOVER lists the XID. Worse, while that
// session is ending, MariaDB lets another session's XA COMMIT find the XID
// before InnoDB has let go of the transaction; the commit then answers OK
// and does nothing, and the branch stays prepared, holding its locks,
// invisible to XA RECOVER until the next restart (reproduced here in about
// 1 of 150 commits sent right after the owner closed; see finishByXID). So
// this adapter:
//
//   - runs phase 2 on the session that prepared the branch whenever that
//     session is alive;
//   - finishes its own branches by XID from a fresh session only once the
//     owner session has been gone from the processlist for a grace period
//     (ErrBusy until then), and treats XAER_NOTA as "not found" only when
//     XA RECOVER no longer lists the XID (ErrBusy otherwise);
//   - marks each session it pins for a branch, once the coordinator has
//     set a mark (MarkSessions, drivers.SessionEnder: a replica on a shared
//     store sets its incarnation's), with the user-level lock
//     SessionLockPrefix+mark+":"+CONNECTION_ID(), taken in the query that
//     reads the connection id, so that a peer taking over a paused
//     coordinator can kill exactly its sessions (EndSessions) and finish
//     its branches;
//   - never returns a session whose XA state is not known to be clean to the
//     pool (a pooled session left in XA state fails every later statement
//     with 1399 XAER_RMFAIL): it is discarded instead, which also detaches a
//     prepared branch for recovery.
//
// # MySQL 8
//
// The same code runs on MySQL 5.7.7+ and 8; only MariaDB is tested here.
// What differs there: with xa_detach_on_prepare=ON (8.0.29+, the default)
// the branch leaves its session at XA PREPARE, so any session can finish it
// and the preparing session is clean again (the adapter still finishes on
// that session, which is allowed, and discards it where MariaDB needs that,
// which costs a reconnect and nothing else); temporary tables are not
// allowed inside XA; XA RECOVER shows other users' branches only with
// XA_RECOVER_ADMIN; InnoDB synchronises commit-by-XID with a disconnecting
// session itself, so the grace period is skipped; and before 8.0.30
// XA PREPARE is not crash-safe with respect to the binary log.
//
// # Decision keeper
//
// A Resource on MariaDB can keep a coordinator's commit decisions
// (xa.Config.DecisionResource; decisionlog.Keeper). Its branch is then
// not an XA transaction at all: BeginKept starts a plain local transaction
// (BEGIN), and CommitWithDecision inserts the decision row into
// DecisionTable and commits (in one query when the DSN has
// multiStatements=true, else in two round trips). Because MariaDB runs the
// statements after a deadlock (or after DDL, which commits implicitly)
// outside the transaction BEGIN started, the decision INSERT writes its row
// only while @@in_transaction is 1, and the adapter refuses further
// statements once it has seen a deadlock (or, after any other server
// error, finds @@in_transaction 0: a failing DDL statement has committed
// implicitly, or innodb_rollback_on_timeout=ON rolled back on a lock wait
// timeout; or, before the statement or commit that follows a query, finds
// it 0: a deadlock reported only to the application, by Rows.Next,
// Rows.Err or Row.Scan), so that nothing runs in autocommit outside the
// branch. MySQL has no @@in_transaction, so BeginKept refuses MySQL servers
// (ErrUnsupported); use a PostgreSQL or MariaDB keeper there. COMMIT,
// ROLLBACK and the statements that commit implicitly (START TRANSACTION or
// BEGIN; DDL; LOCK TABLES; ANALYZE or OPTIMIZE TABLE; SET autocommit)
// would commit a keeper's earlier work at once, which no later check could
// undo: the handle refuses them before they are sent (see Branch), and
// the @@in_transaction checks stay behind that guard, should a statement
// get past it.
//
// # Using your data layer
//
// The handle has database/sql's statement methods (ExecContext,
// QueryContext, QueryRowContext, PrepareContext), so sqlc's database/sql
// queries take it as their DBTX. PrepareContext prepares on the branch's
// pinned session; the statement runs only while the branch is active and is
// closed with it. BeginTx opens a savepoint and returns it as a *sql.Tx
// (Commit releases it, Rollback rolls back to it), so GORM takes the handle
// as a ConnPool and its Transaction nests as savepoints. Branch.DB is a
// *sql.DB view of the same session for code that wants one: sqlx
// (sqlx.NewDb(b.DB(), "mysql")), GORM's mysql driver
// (mysql.Config{Conn: b.DB(), SkipInitializeWithVersion: true}, with
// PrepareStmt if wanted). SAVEPOINT, ROLLBACK TO and RELEASE SAVEPOINT are
// allowed in a branch; transaction control (COMMIT, ROLLBACK, START
// TRANSACTION, XA …, SET autocommit) and the statements that commit
// implicitly are refused by the handle before they reach the server (package
// drivers/sqlguard), also through the database/sql view and prepared
// statements. The module
// github.com/xabridge/xabridge/examples has a recipe for each, run against
// real servers.
//
// All XA statements are sent as literal text without arguments, so
// go-sql-driver uses COM_QUERY: XA statements cannot be server-side prepared.
// The XID is written as hex literals (drivers.XID.MySQL), validated first.
package mysql
