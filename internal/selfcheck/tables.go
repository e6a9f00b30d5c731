package selfcheck

import (
	"context"
	"fmt"

	"github.com/xabridge/xabridge/internal/bank"
)

// markerTable names the table that marks a prefix's tables as selfcheck's.
func markerTable(prefix string) string { return prefix + "_selfcheck" }

const markerText = "created by xabridge selfcheck; its tables may be dropped and recreated"

// claimTables makes sure the prefix's tables are selfcheck's to reset: on
// each database either none of them exists (then the marker is created) or
// the marker says selfcheck made them. Anything else is refused.
func claimTables(ctx context.Context, b *bank.Bank, prefix string) error {
	marker := markerTable(prefix)
	names := []string{b.Table("accounts"), b.Table("transfers"), marker}
	pgHas, myHas := map[string]bool{}, map[string]bool{}
	for _, n := range names {
		var reg *string
		if err := b.PGPool.QueryRow(ctx, "SELECT to_regclass($1)::text", n).Scan(&reg); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		pgHas[n] = reg != nil
		var c int
		if err := b.MyDB.QueryRowContext(ctx,
			"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", n).Scan(&c); err != nil {
			return fmt.Errorf("mysql: %w", err)
		}
		myHas[n] = c > 0
	}
	for _, side := range []struct {
		name string
		has  map[string]bool
	}{{"postgres", pgHas}, {"mysql", myHas}} {
		if side.has[marker] {
			continue
		}
		for _, n := range names[:2] {
			if side.has[n] {
				return fmt.Errorf("selfcheck: refusing to touch table %s on %s: it exists and selfcheck did not create it (no %s table); choose another --table-prefix", n, side.name, marker)
			}
		}
	}
	create := "CREATE TABLE IF NOT EXISTS " + marker + " (note VARCHAR(200) NOT NULL)"
	if !pgHas[marker] {
		if _, err := b.PGPool.Exec(ctx, create); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		if _, err := b.PGPool.Exec(ctx, "INSERT INTO "+marker+" VALUES ($1)", markerText); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
	}
	if !myHas[marker] {
		if _, err := b.MyDB.ExecContext(ctx, create); err != nil {
			return fmt.Errorf("mysql: %w", err)
		}
		if _, err := b.MyDB.ExecContext(ctx, "INSERT INTO "+marker+" VALUES (?)", markerText); err != nil {
			return fmt.Errorf("mysql: %w", err)
		}
	}
	return nil
}

// dropTables removes the check's tables and their marker.
func dropTables(ctx context.Context, b *bank.Bank, prefix string) error {
	if err := b.Drop(ctx); err != nil {
		return err
	}
	q := "DROP TABLE IF EXISTS " + markerTable(prefix)
	if _, err := b.PGPool.Exec(ctx, q); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if _, err := b.MyDB.ExecContext(ctx, q); err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	return nil
}
