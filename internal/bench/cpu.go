package bench

import (
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/xabridge/xabridge/internal/bank"
	"github.com/xabridge/xabridge/mysql"
)

// machineTimes is the whole machine's CPU time from /proc/stat.
type machineTimes struct {
	busy, total time.Duration
	ok          bool
}

// machineCPU reads the machine's cumulative busy and total CPU time (all
// CPUs), where /proc/stat exists.
func machineCPU() machineTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return machineTimes{}
	}
	// user nice system idle iowait irq softirq steal ...
	var total, idle int64
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return machineTimes{}
		}
		if i >= 8 {
			break // guest times are already counted in user
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	// USER_HZ is 100 on every Linux ABI Go supports.
	const tick = 10 * time.Millisecond
	return machineTimes{busy: time.Duration(total-idle) * tick, total: time.Duration(total) * tick, ok: true}
}

// serverProc is a local database server found by its listening port.
type serverProc struct {
	name string
	pid  int
}

// findServer returns the process listening on 127.0.0.1/::1 port, by
// matching /proc/net/tcp* with the processes' socket descriptors (Linux, as
// root or as the server's user). ok is false when it is not found (a remote
// server, another OS).
func findServer(name string, port int) (serverProc, bool) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); ok && err == nil && int(p) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return serverProc{}, false
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			if l, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name()); err == nil && inodes[l] {
				return serverProc{name: name, pid: pid}, true
			}
		}
	}
	return serverProc{}, false
}

// serversCPU returns the CPU time each server has used: its own, its live
// children's (PostgreSQL's backends), and that of the children it has
// reaped (cutime, cstime), so a backend that exits is still counted.
func serversCPU(servers []serverProc) map[string]time.Duration {
	if len(servers) == 0 {
		return nil
	}
	out := map[string]time.Duration{}
	byPID := map[int]string{}
	for _, s := range servers {
		byPID[s.pid] = s.name
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + p.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces.
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var ticks int64
		fields := f[11:13] // utime, stime
		name, own := byPID[pid]
		if own {
			fields = f[11:15] // and cutime, cstime
		} else if name = byPID[ppid]; name == "" {
			continue
		}
		for _, s := range fields {
			v, _ := strconv.ParseInt(s, 10, 64)
			ticks += v
		}
		out[name] += time.Duration(ticks) * 10 * time.Millisecond
	}
	return out
}

// startCPUProfile starts a pprof CPU profile written to path; the returned
// function stops it.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// localServers finds the database servers' processes when they listen on
// this machine's loopback, to measure their CPU time.
func localServers(b *bank.Bank, myURL string) []serverProc {
	var out []serverProc
	if cc := b.PGPool.Config().ConnConfig; isLoopback(cc.Host) {
		if p, ok := findServer("postgres", int(cc.Port)); ok {
			out = append(out, p)
		}
	}
	if mc, err := mysql.ParseURL(myURL); err == nil && mc.Net == "tcp" {
		host, port, err := net.SplitHostPort(mc.Addr)
		if n, perr := strconv.Atoi(port); err == nil && perr == nil && isLoopback(host) {
			if p, ok := findServer("mysql", n); ok {
				out = append(out, p)
			}
		}
	}
	return out
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loadAverage returns /proc/loadavg's three averages, or "" where there is
// none.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
