package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/xa"
)

// Environment of the labelled-transaction child process (the test binary
// started again): where it runs, and the protocol step at which it kills
// itself.
const (
	envLabelChild = "XABRIDGE_TEST_LABEL_CHILD" // the crash step; set only in the child
	envLabelNode  = "XABRIDGE_TEST_LABEL_NODE"
	envLabelLog   = "XABRIDGE_TEST_LABEL_LOG"
	envLabelTable = "XABRIDGE_TEST_LABEL_PREFIX"
)

// labelChild is the child's side: one labelled transfer through a real
// coordinator on the real servers, killed with SIGKILL at the given step,
// as a coordinator that crashes there.
func labelChild(step string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "label child:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	b, err := bank.Open(ctx, os.Getenv("XABRIDGE_PG"), os.Getenv("XABRIDGE_MYSQL"), 2)
	if err != nil {
		fail(err)
	}
	if err := b.SetPrefix(os.Getenv(envLabelTable)); err != nil {
		fail(err)
	}
	c, err := xa.New(ctx, xa.Config{
		NodeID: os.Getenv(envLabelNode), LogDir: os.Getenv(envLabelLog),
		Resources: []drivers.Resource{b.PG, b.My},
		Timeout:   2 * time.Second, // a short fence: the orphan needs attention soon
		Hook: func(s xa.Step, _ xa.StepInfo) {
			if string(s) == step {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			}
		},
	})
	if err != nil {
		fail(err)
	}
	err = c.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		if err := tx.SetLabel("order-4711"); err != nil {
			return err
		}
		pg, err := b.PG.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		my, err := b.My.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := pg.Exec(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance - 5 WHERE id = 1"); err != nil {
			return err
		}
		_, err = my.ExecContext(ctx, "UPDATE "+b.Table("accounts")+" SET balance = balance + 5 WHERE id = 1")
		return err
	})
	fail(fmt.Errorf("the transaction ended without reaching step %s: %v", step, err))
}

// runLabelChild starts the child, which must die by SIGKILL at step, and
// returns the node id and the log directory it used.
func runLabelChild(t *testing.T, b *bank.Bank, prefix, step string) (node, logDir string) {
	t.Helper()
	node, logDir = "lbl-"+randHex(3), newLogDir(t)
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$")
	cmd.Env = append(os.Environ(), envLabelChild+"="+step, envLabelNode+"="+node, envLabelLog+"="+logDir, envLabelTable+"="+prefix,
		"XABRIDGE_PG="+dbtest.PG(t), "XABRIDGE_MYSQL="+dbtest.MySQL(t))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL at %s: %v\n%s", step, err, out)
	}
	return node, logDir
}

type labelRow struct {
	GTRID    string `json:"gtrid"`
	XID      string `json:"xid"`
	Resource string `json:"resource"`
	Label    string `json:"label"`
	Class    string `json:"class"`
}

// labelled returns the JSON list's branches of node.
func listLabelled(t *testing.T, args []string, node string) ([]labelRow, int) {
	t.Helper()
	out, errOut, code := cli(t, append(args, "list", "-o", "json")...)
	var rep struct {
		Branches []labelRow `json:"branches"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("list -o json: %v\n%s%s", err, out, errOut)
	}
	var mine []labelRow
	for _, r := range rep.Branches {
		if strings.HasPrefix(r.GTRID, node+".") {
			mine = append(mine, r)
		}
	}
	return mine, code
}

func labelBank(t *testing.T) (*bank.Bank, string) {
	t.Helper()
	ctx := context.Background()
	b, err := bank.Open(ctx, dbtest.PG(t), dbtest.MySQL(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	prefix := "xab_lbl_" + randHex(3)
	if err := b.SetPrefix(prefix); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx, 2, 100); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = b.Drop(ctx)
		b.Close()
	})
	return b, prefix
}

// A labelled transaction whose coordinator was killed after both branches
// prepared, before any decision: no record anywhere but the branches
// themselves, and list shows the label (from the XIDs), in the table and in
// JSON; show shows it too; once past the fence the orphan needs attention
// (exit 3), and an operator's rollback by global id settles it.
func TestLabelledInDoubtList(t *testing.T) {
	if step := os.Getenv(envLabelChild); step != "" {
		labelChild(step)
		return
	}
	b, prefix := labelBank(t)
	node, logDir := runLabelChild(t, b, prefix, string(xa.StepAllPrepared))
	args := []string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + dbtest.PG(t), "--resource", "mysql=" + dbtest.MySQL(t)}

	// Orphans once past the fence (2 s after the child began); poll for it.
	var rows []labelRow
	var code int
	for deadline := time.Now().Add(30 * time.Second); ; {
		rows, code = listLabelled(t, args, node)
		if len(rows) == 2 && rows[0].Class == "orphan" && rows[1].Class == "orphan" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no two orphans of %s: %+v", node, rows)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not a synchronisation
	}
	if code != exitInDoubt {
		t.Errorf("list exit %d, want %d", code, exitInDoubt)
	}
	gtrid := rows[0].GTRID
	for _, r := range rows {
		if r.Label != "order-4711" || r.GTRID != gtrid {
			t.Errorf("branch %+v: want label order-4711", r)
		}
	}
	out, _, _ := cli(t, append(args, "list")...)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, gtrid) {
			lines = append(lines, l)
			if f := strings.Fields(l); f[len(f)-1] != "order-4711" {
				t.Errorf("table row without the label in its last column: %q", l)
			}
		}
	}
	if len(lines) != 2 || !strings.Contains(out, "LABEL") {
		t.Errorf("list table:\n%s", out)
	}
	out, _, _ = cli(t, append(args, "show", gtrid)...)
	if !strings.Contains(out, "global transaction "+gtrid+" (label order-4711)") {
		t.Errorf("show:\n%s", out)
	}

	out, errOut, code := cli(t, append(args, "resolve", gtrid, "--rollback")...)
	if code != 0 {
		t.Fatalf("resolve --rollback exit %d\n%s%s", code, out, errOut)
	}
	if rows, _ := listLabelled(t, args, node); len(rows) != 0 {
		t.Errorf("left after the rollback: %+v", rows)
	}
	st, err := b.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PGTotal+st.MyTotal != 400 {
		t.Errorf("money after the rollback: %+v", st)
	}
}

// A labelled transaction whose coordinator was killed right after its
// commit decision: the decision carries the label, so show and log dump
// show it, list shows it on both branches, and recover commits them by
// their labelled XIDs.
func TestLabelledDecisionShowAndDump(t *testing.T) {
	if step := os.Getenv(envLabelChild); step != "" {
		labelChild(step)
		return
	}
	b, prefix := labelBank(t)
	node, logDir := runLabelChild(t, b, prefix, string(xa.StepDecided))
	args := []string{"--node-id", node, "--log-dir", logDir, "--resource", "pg=" + dbtest.PG(t), "--resource", "mysql=" + dbtest.MySQL(t)}
	rows, _ := listLabelled(t, args, node)
	if len(rows) != 2 {
		t.Fatalf("branches of %s: %+v", node, rows)
	}
	gtrid := rows[0].GTRID
	for _, r := range rows {
		if r.Label != "order-4711" || r.Class != "commit-pending" {
			t.Errorf("branch %+v", r)
		}
	}
	out, _, _ := cli(t, append(args, "show", gtrid)...)
	if !strings.Contains(out, "global transaction "+gtrid+" (label order-4711)") || !strings.Contains(out, "log: committed") {
		t.Errorf("show:\n%s", out)
	}
	out, _, _ = cli(t, append(args, "show", gtrid, "-o", "json")...)
	var shown struct {
		Log struct {
			Label string `json:"label"`
		} `json:"log"`
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown.Log.Label != "order-4711" {
		t.Errorf("show -o json: %v\n%s", err, out)
	}
	out, _, code0 := cli(t, "log", "dump", "--log-dir", logDir)
	if code0 != 0 || !strings.Contains(out, "LABEL") {
		t.Fatalf("log dump exit %d:\n%s", code0, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, gtrid) {
			if f := strings.Fields(l); f[len(f)-1] != "order-4711" {
				t.Errorf("log dump row: %q", l)
			}
		}
	}
	out, _, _ = cli(t, "log", "dump", "--log-dir", logDir, "-o", "json")
	if !strings.Contains(out, `"label": "order-4711"`) {
		t.Errorf("log dump -o json:\n%s", out)
	}

	out, errOut, code := cli(t, append(args, "recover")...)
	if code != 0 {
		t.Fatalf("recover exit %d\n%s%s", code, out, errOut)
	}
	if rows, _ := listLabelled(t, args, node); len(rows) != 0 {
		t.Errorf("left after recover: %+v", rows)
	}
	st, err := b.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PGTotal+st.MyTotal != 400 {
		t.Errorf("money after recover: %+v", st)
	}
	pg, my, err := b.Balances(context.Background(), 1, 1)
	if err != nil || pg != 95 || my != 105 {
		t.Errorf("balances after recover: pg %d, mysql %d, %v (want 95, 105: committed)", pg, my, err)
	}
}
