package metrics_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/strand"
	"github.com/xabridge/xabridge/metrics"
	"github.com/xabridge/xabridge/recovery"
	"github.com/xabridge/xabridge/xa"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestRealServerScenarios runs a commit, two kinds of abort and a
// recovered orphan against the real PostgreSQL and MySQL/MariaDB servers
// and checks, after each, that the counters, histograms and gauges moved
// exactly as they should.
func TestRealServerScenarios(t *testing.T) {
	ctx := context.Background()
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPrefix("xab_mx_" + randHex(3)); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 10, 100); err != nil {
		t.Fatal(err)
	}
	deferred := b.Table("accounts") + "_d"
	t.Cleanup(func() {
		_, _ = b.PGPool.Exec(context.Background(), "DROP TABLE IF EXISTS "+deferred)
		_ = b.Drop(context.Background())
		b.Close()
	})

	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	reg.MustRegister(metrics.NewFileLogCollector(fl))
	coord, err := xa.New(ctx, xa.Config{NodeID: "mx-" + randHex(3), Log: fl, Resources: []drivers.Resource{b.PG, b.My}, Hook: m.Hook})
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Close()

	expect := func(when string, want map[string]float64) {
		t.Helper()
		for k, w := range want {
			name, labels := parseKey(k)
			if got := value(t, reg, name, labels); got != w {
				t.Errorf("%s: %s = %v, want %v", when, k, got, w)
			}
		}
		if t.Failed() {
			t.Fatalf("%s:\n%s", when, series(t, reg))
		}
	}

	// A committed transfer: two branches, prepared, decided, committed.
	if _, err := b.Do(ctx, coord, bank.Transfer{PGAccount: 1, MyAccount: 1, Amount: 5}); err != nil {
		t.Fatal(err)
	}
	st := fl.Stats()
	expect("after a commit", map[string]float64{
		"xabridge_transactions_begun_total":                                   1,
		"xabridge_transactions_finished_total{outcome=committed,reason=none}": 1,
		"xabridge_transactions_finished_total":                                1,
		"xabridge_transactions_in_flight":                                     0,
		"xabridge_phase_duration_seconds_count{phase=work}":                   1,
		"xabridge_phase_duration_seconds_count{phase=prepare}":                1,
		"xabridge_phase_duration_seconds_count{phase=decision}":               1,
		"xabridge_phase_duration_seconds_count{phase=commit}":                 1,
		"xabridge_transaction_duration_seconds_count{outcome=committed}":      1,
		"xabridge_transaction_branches_sum":                                   2,
		"xabridge_branch_failures_total":                                      0,
		"xabridge_decision_log_fsyncs_total":                                  float64(st.Syncs),
		"xabridge_decision_log_batch_records_count":                           float64(st.Batches),
		"xabridge_decision_log_batch_records_sum":                             float64(st.BatchRecords),
	})
	if st.Syncs < 1 || st.Batches < 1 {
		t.Fatalf("the commit decision cost no fsync: %+v", st)
	}
	// The phases took real time, and the whole took longer than the sum of
	// the prepare, decision and commit phases.
	var phases float64
	for _, p := range []string{"prepare", "decision", "commit"} {
		d := value(t, reg, "xabridge_phase_duration_seconds_sum", map[string]string{"phase": p})
		if d <= 0 {
			t.Errorf("phase %s took %v s", p, d)
		}
		phases += d
	}
	if total := value(t, reg, "xabridge_transaction_duration_seconds_sum", nil); total < phases {
		t.Errorf("transaction took %v s, less than its phases (%v s)", total, phases)
	}

	// An abort by the application: insufficient funds, nothing prepared.
	if _, err := b.Do(ctx, coord, bank.Transfer{PGAccount: 2, MyAccount: 2, Amount: 1000}); !errors.Is(err, bank.ErrInsufficientFunds) {
		t.Fatalf("err = %v, want insufficient funds", err)
	}
	expect("after an application abort", map[string]float64{
		"xabridge_transactions_begun_total":                                       2,
		"xabridge_transactions_finished_total{outcome=aborted,reason=user-error}": 1,
		"xabridge_transactions_finished_total{outcome=committed}":                 1,
		"xabridge_phase_duration_seconds_count{phase=prepare}":                    1,
		"xabridge_transaction_duration_seconds_count{outcome=aborted}":            1,
		"xabridge_transactions_in_flight":                                         0,
	})

	// An abort by the database at PREPARE: PostgreSQL checks a deferred
	// unique constraint there and refuses.
	if _, err := b.PGPool.Exec(ctx, "CREATE TABLE "+deferred+" (id BIGINT, CONSTRAINT "+deferred+"_u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)"); err != nil {
		t.Fatal(err)
	}
	err = coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := pg.Exec(ctx, "INSERT INTO "+deferred+" VALUES (1), (1)"); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance + 1 WHERE id = 3")
		return err
	})
	if xa.OutcomeOf(err) != xa.Aborted || xa.ReasonOf(err) != xa.ReasonPrepareRefused {
		t.Fatalf("err = %v (reason %s), want an abort refused at prepare", err, xa.ReasonOf(err))
	}
	expect("after a refused prepare", map[string]float64{
		"xabridge_transactions_begun_total":                                            3,
		"xabridge_transactions_finished_total{outcome=aborted,reason=prepare-refused}": 1,
		"xabridge_branch_failures_total{resource=pg,op=prepare}":                       1,
		"xabridge_phase_duration_seconds_count{phase=prepare}":                         1,
		"xabridge_phase_duration_seconds_count{phase=work}":                            2,
		"xabridge_transactions_in_flight":                                              0,
	})

	// A recovered orphan: a coordinator died after phase 1 on both
	// databases. Its recovery sees the branches (the oldest-prepared age
	// climbs), then resolves them (it falls to 0).
	dead := "mxd-" + randHex(3)
	g := strand.GlobalID(dead, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), 1)
	upd := func(id int) string {
		return fmt.Sprintf("UPDATE %s SET balance = balance + 7 WHERE id = %d", b.Table("accounts"), id)
	}
	pgUpd := upd(4)
	myUpd := upd(4)
	if err := strand.Prepare(ctx, b.PG, drivers.XID{Global: g, Branch: 0}, pgUpd); err != nil {
		t.Fatal(err)
	}
	if err := strand.Prepare(ctx, b.My, drivers.XID{Global: g, Branch: 1}, myUpd); err != nil {
		t.Fatal(err)
	}
	deadLog, err := decisionlog.OpenFileLog(t.TempDir(), decisionlog.FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer deadLog.Close()
	zero := time.Duration(0)
	rec, err := recovery.New(recovery.Config{
		NodeID: dead, Log: deadLog, Resources: []drivers.Resource{b.PG, b.My}, MinAge: &zero,
		Settle: 200 * time.Millisecond, OnReport: m.ObserveReport,
	})
	if err != nil {
		t.Fatal(err)
	}
	rec.Pass(ctx, false)
	for _, res := range []string{"pg", "mysql"} {
		if age := value(t, reg, "xabridge_prepared_oldest_age_seconds", map[string]string{"resource": res}); age < 60 || age > 120 {
			t.Errorf("oldest prepared age on %s = %v s after the first scan, want the orphan's age (about 60 s)", res, age)
		}
	}
	expect("after the first pass", map[string]float64{
		"xabridge_prepared_branches{resource=pg,class=orphan}":    1,
		"xabridge_prepared_branches{resource=mysql,class=orphan}": 1,
		"xabridge_recovery_branches_resolved_total":               0,
		"xabridge_recovery_passes_total":                          1,
	})
	// Later passes resolve it (after the settle time; a MariaDB branch may
	// answer busy once while its session closes).
	deadline := time.Now().Add(30 * time.Second)
	for value(t, reg, "xabridge_recovery_branches_resolved_total", nil) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("recovery did not resolve the orphan in 30s:\n%s", series(t, reg))
		}
		time.Sleep(100 * time.Millisecond) // the settle time must pass between scans
		rec.Pass(ctx, false)
	}
	expect("after recovery", map[string]float64{
		"xabridge_recovery_branches_resolved_total{resource=pg,action=rollback}":    1,
		"xabridge_recovery_branches_resolved_total{resource=mysql,action=rollback}": 1,
		"xabridge_prepared_oldest_age_seconds{resource=pg}":                         0,
		"xabridge_prepared_oldest_age_seconds{resource=mysql}":                      0,
		"xabridge_prepared_branches{resource=pg,class=orphan}":                      0,
		"xabridge_prepared_branches{resource=mysql,class=orphan}":                   0,
		"xabridge_recovery_action_failures_total":                                   0,
		"xabridge_recovery_scan_errors_total":                                       0,
		"xabridge_heuristic_outcomes_total":                                         0,
	})
	// And the metrics tell the truth: the stranded updates were rolled back.
	pgBal, myBal, err := b.Balances(ctx, 4, 4)
	if err != nil {
		t.Fatal(err)
	}
	if pgBal != 100 || myBal != 100 {
		t.Fatalf("balances %d/%d after recovery, want 100/100 (the orphan rolled back)", pgBal, myBal)
	}
}
