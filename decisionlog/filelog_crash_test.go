package decisionlog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

// crashGID is the gtrid the crash helper commits as number n.
func crashGID(n uint64) drivers.GlobalID {
	begin := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(n) * time.Millisecond)
	return drivers.MustGlobalID("crash", begin, uint32(n), begin.Add(100*365*24*time.Hour))
}

// TestCrashHelperProcess is the process TestCrashSIGKILL kills: clients
// commit decisions as fast as the log takes them (ending some, recording
// actions on others) and print "ACK n" once Commit of number n returned.
func TestCrashHelperProcess(t *testing.T) {
	dir := os.Getenv("XABRIDGE_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process for TestCrashSIGKILL")
	}
	l, err := OpenFileLog(dir, FileLogOptions{Node: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var next atomic.Uint64
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				n := next.Add(1)
				g := crashGID(n)
				if err := l.Commit(ctx, Decision{GTRID: g, Participants: []Participant{{Resource: "pg", Branch: 0}, {Resource: "mysql", Branch: 1}}}); err != nil {
					fmt.Fprintln(os.Stderr, "commit:", err)
					os.Exit(1)
				}
				mu.Lock()
				fmt.Fprintf(out, "ACK %d\n", n)
				out.Flush()
				mu.Unlock()
				switch n % 3 {
				case 0:
					_ = l.End(g)
				case 1:
					_ = l.Record(ctx, Action{GTRID: g, Resource: "pg", Op: "commit", Actor: "crash"})
				}
			}
		})
	}
	wg.Wait()
}

// crashImage runs the helper, kills it with SIGKILL after about acks
// acknowledged decisions, and returns the log file and what was acked.
func crashImage(t *testing.T, acks int) ([]byte, map[uint64]bool) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelperProcess$")
	cmd.Env = append(os.Environ(), "XABRIDGE_CRASH_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[uint64]bool{}
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			v, err := strconv.ParseUint(n, 10, 64)
			if err != nil {
				t.Fatalf("helper said %q", sc.Text())
			}
			acked[v] = true
		}
		if len(acked) >= acks && !killed {
			// Mid-batch: the other clients' decisions are being written.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	_ = cmd.Wait()
	if !killed {
		t.Fatalf("helper ended before it was killed: %s", stderr.String())
	}
	return flReadLogFile(t, dir), acked
}

// crashLayout is where an image's batches are.
type crashLayout struct {
	hdrEnd    int
	durableTo int // the furthest offset a seal records durable
	ackedTo   int // the end of the batch holding the last acknowledged decision
}

func layoutOf(t *testing.T, data []byte, acked map[uint64]bool) crashLayout {
	t.Helper()
	var lay crashLayout
	var batch []*logRecord
	for off := len(logMagic); off < len(data); {
		payload, next, problem := frameAt(data, off)
		if problem != "" {
			break // an unsealed, torn end: SIGKILL cannot leave one, but be tolerant
		}
		rec, err := decodePayload(payload)
		if err != nil {
			t.Fatal(err)
		}
		switch rec.kind {
		case recHeader:
			lay.hdrEnd = next
		case recSeal:
			lay.durableTo = max(lay.durableTo, int(rec.durable))
			for _, r := range batch {
				if r.kind == recCommit && acked[uint64(r.gtrid.Seq())] {
					lay.ackedTo = next
				}
			}
			batch = batch[:0]
		default:
			batch = append(batch, rec)
		}
		off = next
	}
	return lay
}

// A log written by a real process killed with SIGKILL mid-batch, then torn
// as a power loss during an fsync could tear it (truncated, zeroed or
// garbage past what any fsync confirmed): every acknowledged decision
// survives the open, and verify and repair report exactly the region that
// is cut. Damage below what a seal records as durable is refused.
func TestCrashSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a helper process")
	}
	images, cases := 3, 100
	if raceEnabled {
		images, cases = 1, 40 // the concurrency is in the helper; the cases are byte loops
	}
	for img := range images {
		rng := rand.New(rand.NewPCG(uint64(img), 10))
		image, acked := crashImage(t, 300+rng.IntN(700))
		lay := layoutOf(t, image, acked)
		protect := max(lay.durableTo, lay.ackedTo)
		t.Logf("image %d: %d bytes, %d acknowledged, durable to %d, acknowledged to %d", img, len(image), len(acked), lay.durableTo, lay.ackedTo)
		if lay.ackedTo == 0 || protect > len(image) {
			t.Fatalf("bad layout %+v", lay)
		}
		for c := range cases {
			mode := c % 4
			data := bytes.Clone(image)
			switch mode {
			case 0: // truncated
				data = data[:protect+rng.IntN(len(image)-protect+1)]
			case 1, 2: // zeroed or garbage, past the protected offset
				if protect == len(image) {
					continue
				}
				from := protect + rng.IntN(len(image)-protect)
				to := from + 1 + rng.IntN(min(len(image)-from, 8192))
				for i := from; i < to; i++ {
					if mode == 1 {
						data[i] = 0
					} else {
						data[i] = byte(rng.Uint32())
					}
				}
			case 3: // damage to acknowledged records
				from := lay.hdrEnd + rng.IntN(lay.durableTo-lay.hdrEnd)
				to := from + 1 + rng.IntN(min(lay.durableTo-from, 4096))
				clear(data[from:to])
				if bytes.Equal(data, image) {
					continue
				}
			}
			name := fmt.Sprintf("image%d/case%d/mode%d", img, c, mode)
			crashCheck(t, name, data, acked, lay, mode == 3)
		}
	}
}

func crashCheck(t *testing.T, name string, data []byte, acked map[uint64]bool, lay crashLayout, wantRefused bool) {
	t.Helper()
	dir := flWriteLogFile(t, data)
	rep, err := VerifyLog(dir)
	if err != nil {
		t.Fatalf("%s: verify: %v", name, err)
	}
	if wantRefused {
		if rep.Damage == nil {
			t.Fatalf("%s: verify found no damage: %+v", name, rep)
		}
		if l, err := OpenFileLog(dir, FileLogOptions{}); !errors.Is(err, ErrCorruptLog) {
			if err == nil {
				l.Close()
			}
			t.Fatalf("%s: open = %v, want ErrCorruptLog", name, err)
		}
		if _, err := RepairLog(dir); !errors.Is(err, ErrCorruptLog) {
			t.Fatalf("%s: repair = %v, want a refusal", name, err)
		}
		if !bytes.Equal(flReadLogFile(t, dir), data) {
			t.Fatalf("%s: a refusal changed the file", name)
		}
		return
	}
	if rep.Damage != nil {
		t.Fatalf("%s: damage past every durable offset refused: %v", name, rep.Damage)
	}
	cutAt := len(data)
	if rep.Cut != nil {
		cutAt = int(rep.Cut.Offset)
		if rep.Cut.Length != int64(len(data)-cutAt) {
			t.Fatalf("%s: cut %+v does not run to the end (%d)", name, rep.Cut, len(data))
		}
		if cutAt < lay.ackedTo {
			t.Fatalf("%s: verify would cut at %d, before the acknowledged end %d", name, cutAt, lay.ackedTo)
		}
		for _, r := range rep.Cut.Records {
			f := strings.Fields(r)
			if f[0] != "commit" {
				continue
			}
			g, err := drivers.ParseGlobalID(f[1])
			if err != nil {
				t.Fatalf("%s: cut record %q: %v", name, r, err)
			}
			if acked[uint64(g.Seq())] {
				t.Fatalf("%s: verify would cut acknowledged %s", name, r)
			}
		}
	}
	// Repair cuts exactly that, keeping a copy.
	rdir := flWriteLogFile(t, data)
	rrep, err := RepairLog(rdir)
	if err != nil {
		t.Fatalf("%s: repair: %v", name, err)
	}
	if got := flReadLogFile(t, rdir); !bytes.Equal(got, data[:cutAt]) {
		t.Fatalf("%s: repair left %d bytes, want %d", name, len(got), cutAt)
	}
	if rep.Cut != nil {
		saved, err := os.ReadFile(rrep.Saved)
		if err != nil || !bytes.Equal(saved, data[cutAt:]) {
			t.Fatalf("%s: repair's copy (%v) is not the %d bytes it cut", name, err, len(data)-cutAt)
		}
	}
	// The coordinator's open keeps every acknowledged decision.
	l, err := OpenFileLog(dir, FileLogOptions{})
	if err != nil {
		t.Fatalf("%s: open: %v", name, err)
	}
	defer l.Close()
	for n := range acked {
		if e, ok := l.Lookup(crashGID(n)); !ok || (e.State != StateCommitted && e.State != StateDone) {
			t.Fatalf("%s: acknowledged decision %d lost: %+v, %v", name, n, e, ok)
		}
	}
	if s := l.Stats(); s.Bytes != int64(cutAt) {
		t.Fatalf("%s: open kept %d bytes, verify said %d", name, s.Bytes, cutAt)
	}
}
