// Package replica runs a coordinator as one replica: the xa.Coordinator, its
// in-process recovery, and, on a shared decision store (decisionlog/pgstore),
// the takeover of dead peers (DESIGN rules 10 to 12). It is where xa,
// recovery and the store meet: xa imports neither recovery nor pgx.
//
// (Draft; the full description follows with the implementation.)
package replica
