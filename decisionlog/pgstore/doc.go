// Package pgstore is a decision log in PostgreSQL shared by several
// coordinators, with node leases.
package pgstore
