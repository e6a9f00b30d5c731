package selfcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/xabridge/xabridge/internal/crashcheck"
)

// envChild passes a child its configuration, as JSON: in the environment,
// not on the command line, which other users can read (it holds the
// database URLs).
const envChild = "XABRIDGE_SELFCHECK_CHILD"

// childConfig is what a workload child is told.
type childConfig struct {
	PGURL    string `json:"pg"`
	MyURL    string `json:"mysql"`
	Prefix   string `json:"table_prefix"`
	LogDir   string `json:"log_dir"`
	NodeID   string `json:"node_id"`
	Workers  int    `json:"workers"`
	Accounts int    `json:"accounts"`
	Seed     uint64 `json:"seed"`
	// The shared store, if any (then LogDir is empty).
	StoreURL    string        `json:"store,omitempty"`
	StoreSchema string        `json:"store_schema,omitempty"`
	LeaseTTL    time.Duration `json:"lease_ttl,omitempty"`
}

// RunChild is the workload child's side: started by Run (through
// Options.Child) with its configuration in the environment, it runs a
// coordinator moving money and writes its journal to out until it is
// killed, or its armed crash point kills it.
func RunChild(ctx context.Context, out, errw io.Writer) error {
	raw := os.Getenv(envChild)
	if raw == "" {
		return errors.New("selfcheck child: started without its configuration; it is started by xabridge selfcheck")
	}
	var c childConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return fmt.Errorf("selfcheck child: %s: %w", envChild, err)
	}
	cfg := crashcheck.ChildConfig{PGURL: c.PGURL, MyURL: c.MyURL, Prefix: c.Prefix, LogDir: c.LogDir, Node: c.NodeID,
		Order: crashcheck.Mixed, Workers: c.Workers, Accounts: c.Accounts, Seed: c.Seed,
		Logger: slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelError})),
		Store:  crashcheck.StoreConfig{URL: c.StoreURL, Schema: c.StoreSchema, LeaseTTL: c.LeaseTTL}}
	cp, nth, armed, err := crashcheck.CrashFromEnv()
	if err != nil {
		return err
	}
	if armed {
		cfg.Crash, cfg.CrashNth = &cp, nth
	}
	return crashcheck.RunChild(ctx, cfg, out)
}

// runChild starts one workload child and waits for its death: by its armed
// crash point, or by SIGKILL from here after killAfter. killed reports
// whether it died by SIGKILL.
func (o *Options) runChild(ctx context.Context, crash string, nth int, killAfter time.Duration, seed uint64) (crashcheck.Journal, bool, error) {
	cfg, err := json.Marshal(childConfig{PGURL: o.PGURL, MyURL: o.MyURL, Prefix: o.Prefix, LogDir: o.LogDir,
		NodeID: o.NodeID, Workers: o.Workers, Accounts: o.Accounts, Seed: seed,
		StoreURL: o.Store.URL, StoreSchema: o.Store.Schema, LeaseTTL: o.LeaseTTL})
	if err != nil {
		return nil, false, err
	}
	cmd := exec.CommandContext(ctx, o.Child[0], o.Child[1:]...)
	cmd.Env = append(os.Environ(), envChild+"="+string(cfg),
		crashcheck.EnvCrashPoint+"="+crash, crashcheck.EnvCrashNth+"="+strconv.Itoa(nth))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("selfcheck: starting a child: %w", err)
	}
	if killAfter > 0 {
		t := time.AfterFunc(killAfter, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		defer t.Stop()
	}
	werr := cmd.Wait()
	killed := false
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		killed = true
	}
	if ctx.Err() != nil {
		return nil, false, ctx.Err()
	}
	if werr != nil && !killed {
		return nil, false, fmt.Errorf("selfcheck: a child failed: %v\n%s", werr, bytes.TrimSpace(stderr.Bytes()))
	}
	j, err := crashcheck.ReadJournal(&stdout)
	if err != nil {
		return nil, false, err
	}
	return j, killed, nil
}
