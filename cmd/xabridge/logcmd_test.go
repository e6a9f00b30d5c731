package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// logWithTornTail returns a log directory whose last batch (one commit
// decision) lost its seal, and that decision's gtrid.
func logWithTornTail(t *testing.T) (string, drivers.GlobalID) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.OpenFileLog(dir, decisionlog.FileLogOptions{Node: "node-7"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	var last drivers.GlobalID
	for i := range 3 {
		last = drivers.MustGlobalID("node-7", now, uint32(i), now.Add(time.Hour))
		if err := l.Commit(context.Background(), decisionlog.Decision{GTRID: last, Participants: []decisionlog.Participant{{Resource: "pg"}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "xabridge.log")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-3); err != nil {
		t.Fatal(err)
	}
	return dir, last
}

func TestLogVerifyRepair(t *testing.T) {
	dir, torn := logWithTornTail(t)
	path := filepath.Join(dir, "xabridge.log")
	before, _ := os.ReadFile(path)

	out, errOut, code := cli(t, "log", "verify", "--log-dir", dir)
	if code != exitError || !strings.Contains(out, "would cut") || !strings.Contains(out, "never acknowledged: commit "+torn.String()) || !strings.Contains(out, "node node-7") {
		t.Fatalf("verify of a torn log: exit %d\n%s%s", code, out, errOut)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatalf("verify changed the log")
	}

	out, errOut, code = cli(t, "log", "repair", "--log-dir", dir, "-o", "json")
	if code != exitOK {
		t.Fatalf("repair: exit %d\n%s%s", code, out, errOut)
	}
	var rep struct {
		Cut *struct {
			Offset, Length int64
			Records        []string
		}
		Saved string
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("repair -o json: %v\n%s", err, out)
	}
	if rep.Cut == nil || len(rep.Cut.Records) != 1 || rep.Saved == "" {
		t.Fatalf("repair report: %s", out)
	}
	saved, err := os.ReadFile(rep.Saved)
	if err != nil || int64(len(saved)) != rep.Cut.Length || string(saved) != string(before[rep.Cut.Offset:]) {
		t.Fatalf("the kept copy is not what was cut: %v", err)
	}

	out, errOut, code = cli(t, "log", "verify", "--log-dir", dir)
	if code != exitOK || !strings.Contains(out, "intact") {
		t.Fatalf("verify after repair: exit %d\n%s%s", code, out, errOut)
	}
}

func TestLogVerifyRefusals(t *testing.T) {
	dir, _ := logWithTornTail(t)
	path := filepath.Join(dir, "xabridge.log")
	data, _ := os.ReadFile(path)
	// Damage the first decision: later seals prove it was acknowledged.
	at := strings.Index(string(data), `{"k":"commit"`)
	if at < 0 {
		t.Fatal("no commit record")
	}
	for i := at; i < at+20; i++ {
		data[i] = 0
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"verify", []string{"log", "verify", "--log-dir", dir}, "DAMAGED"},
		{"repair", []string{"log", "repair", "--log-dir", dir}, "refusing to cut acknowledged records"},
		{"dump", []string{"log", "dump", "--log-dir", dir}, "corrupt"},
		{"verify of a missing log", []string{"log", "verify", "--log-dir", filepath.Join(dir, "nope")}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := cli(t, tt.args...)
			if code != exitError || !strings.Contains(out+errOut, tt.want) {
				t.Fatalf("exit %d, want %d mentioning %q\n%s%s", code, exitError, tt.want, out, errOut)
			}
		})
	}
	if after, _ := os.ReadFile(path); string(after) != string(data) {
		t.Fatalf("a refused repair changed the log")
	}
}

// An empty or zero-filled file is no log for the operator tools.
func TestLogToolsRefuseUninitialisedLog(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "xabridge.log"), make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"log", "dump"}, {"log", "stats"}, {"log", "verify"}, {"log", "compact"}, {"log", "repair"}} {
		out, errOut, code := cli(t, append(args, "--log-dir", dir)...)
		if code != exitError || !strings.Contains(out+errOut, "no decision log") && !strings.Contains(out+errOut, "no initialised log") {
			t.Errorf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	// Not even the tools that write (compact, repair) started a log in it.
	if data, err := os.ReadFile(filepath.Join(dir, "xabridge.log")); err != nil || len(data) != 4096 || strings.Trim(string(data), "\x00") != "" {
		t.Fatalf("the zero-filled file was changed: %v", err)
	}
}
