package decisionlog

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// TestOpenMemory measures what opening a log of many finished transactions
// costs a fresh process: resident memory (now and at its peak) and the time
// to open. It is a measurement, not a unit test: it runs only when
// XABRIDGE_MEMTEST_N is set, e.g.
//
//	XABRIDGE_MEMTEST_N=1000000 go test -run TestOpenMemory -v ./decisionlog
//
// The log is written directly in the file format (commit and end of each
// transaction, 1024 records per sealed batch), as a coordinator that never
// compacted would leave it.
func TestOpenMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("XABRIDGE_MEMTEST_N"))
	if n <= 0 {
		t.Skip("set XABRIDGE_MEMTEST_N to measure")
	}
	dir := os.Getenv("XABRIDGE_MEMTEST_KEEP") // reuse a log written before
	if dir == "" {
		dir = t.TempDir()
	}
	var size int64
	if fi, err := os.Stat(filepath.Join(dir, logFileName)); err == nil {
		size = fi.Size()
	} else {
		size = flWriteFinished(t, dir, n)
	}
	t.Logf("log of %d finished transactions: %d bytes", n, size)
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenMemoryHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "XABRIDGE_MEMTEST_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "MEM ") {
			t.Log(line)
		}
	}
}

// TestOpenMemoryHelper is run by TestOpenMemory in a fresh process.
func TestOpenMemoryHelper(t *testing.T) {
	dir := os.Getenv("XABRIDGE_MEMTEST_DIR")
	if dir == "" {
		t.Skip("helper process for TestOpenMemory")
	}
	before := procStatus(t)
	start := time.Now()
	l, err := OpenFileLog(dir, FileLogOptions{CompactBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	runtime.GC()
	after := procStatus(t)
	s := l.Stats()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	debug.FreeOSMemory()
	freed := procStatus(t)
	fmt.Printf("MEM open %v: %d entries (%d done, %d live); RSS before %s, after %s, peak %s, after returning freed memory %s; Go heap in use %d kB\n",
		took.Round(time.Millisecond), s.Entries, s.Done, s.Live, before["VmRSS"], after["VmRSS"], after["VmHWM"], freed["VmRSS"], ms.HeapInuse>>10)
	l.Close()
}

// procStatus returns the fields of /proc/self/status.
func procStatus(t *testing.T) map[string]string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// flWriteFinished writes a log of n committed and ended transactions and
// returns its size.
func flWriteFinished(t *testing.T, dir string, n int) int64 {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, logFileName))
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	size := int64(0)
	put := func(b []byte) {
		w.Write(b)
		size += int64(len(b))
	}
	put([]byte(logMagic))
	hdr, err := encodeFrame(&wireRecord{Kind: recHeader.String(), At: flT0, Version: formatVersion, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	put(hdr)
	durable, seq, inBatch := size, uint64(0), 0
	seal := func() {
		seq++
		frame, err := encodeFrame(&wireRecord{Kind: recSeal.String(), At: flT0, Seq: seq, Durable: durable})
		if err != nil {
			t.Fatal(err)
		}
		put(frame)
		durable, inBatch = size, 0
	}
	parts := []Participant{{Resource: "pg", Branch: 0}, {Resource: "mysql", Branch: 1}}
	for i := range n {
		begin := flT0.Add(time.Duration(i) * time.Millisecond)
		g := drivers.MustGlobalID("node-1", begin, uint32(i), begin.Add(30*time.Second))
		for _, wr := range []wireRecord{
			{Kind: recCommit.String(), GTRID: g.String(), At: begin, Participants: parts},
			{Kind: recEnd.String(), GTRID: g.String(), At: begin},
		} {
			frame, err := encodeFrame(&wr)
			if err != nil {
				t.Fatal(err)
			}
			put(frame)
		}
		if inBatch += 2; inBatch >= 1024 {
			seal()
		}
	}
	if inBatch > 0 {
		seal()
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return size
}
