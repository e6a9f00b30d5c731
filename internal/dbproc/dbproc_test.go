package dbproc

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Fatal("this process is not alive")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if processAlive(cmd.Process.Pid) {
		t.Fatalf("finished process %d reported alive", cmd.Process.Pid)
	}
}

// ReapStale stops (here: with a stand-in devdb script) only the pairs
// whose owner is dead, and removes them.
func TestReapStaleOnlyDeadOwners(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	script := filepath.Join(tmp, "devdb")
	log := filepath.Join(tmp, "calls")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $XABRIDGE_DEVDB_DIR\" >>"+log+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, pid int) string {
		d := filepath.Join(tmp, dirPattern+name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	live, stale := mk("live", os.Getpid()), mk("stale", dead.Process.Pid)
	n, err := ReapStale(context.Background(), script)
	if err != nil || n != 1 {
		t.Fatalf("ReapStale = %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale pair still there: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live pair removed: %v", err)
	}
	calls, _ := os.ReadFile(log)
	if string(calls) != "down "+stale+"\n" {
		t.Errorf("devdb calls %q", calls)
	}
}

func TestBadServerName(t *testing.T) {
	p := &Pair{script: "/nonexistent"}
	for _, f := range []func(context.Context, Server) error{p.Kill9, p.StartServer, p.Restart} {
		if err := f(context.Background(), "oracle"); err == nil {
			t.Fatal("unknown server accepted")
		}
	}
}

// Ports are distinct, free, and below the ephemeral range, so that no
// outgoing connection can take one while its server is down for a restart.
func TestFreePortsOutsideEphemeralRange(t *testing.T) {
	lo, hi := listenRange()
	ports, err := freePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p < lo || p >= hi {
			t.Errorf("port %d outside %d-%d", p, lo, hi)
		}
		if seen[p] {
			t.Errorf("port %d twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d not free: %v", p, err)
			continue
		}
		l.Close()
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if start, err := strconv.Atoi(strings.Fields(string(b))[0]); err == nil && hi > start {
			t.Errorf("range ends at %d, past the ephemeral start %d", hi, start)
		}
	}
}
