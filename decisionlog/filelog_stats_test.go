package decisionlog

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/drivers"
)

func TestBatchBucket(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want int
	}{{1, 0}, {2, 1}, {3, 2}, {4, 2}, {5, 3}, {8, 3}, {9, 4}, {1024, 10}, {1025, 11}, {1 << 20, 11}} {
		if got := batchBucket(tt.n); got != tt.want {
			t.Errorf("batchBucket(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
}

// The batch-size histogram of FileLogStats agrees with the other counters:
// one entry per fsynced batch, its sizes adding up to the records written
// in them.
func TestFileLogBatchSizes(t *testing.T) {
	l, err := OpenFileLog(t.TempDir(), FileLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	now := time.Now()
	decide := func(seq uint32) error {
		g := drivers.MustGlobalID("n", now.Truncate(time.Millisecond), seq, now.Add(time.Minute).Truncate(time.Millisecond))
		return l.Commit(ctx, Decision{GTRID: g, Participants: []Participant{{Resource: "a"}, {Resource: "b", Branch: 1}}})
	}
	// One at a time: every batch holds one record.
	for i := range 5 {
		if err := decide(uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	s := l.Stats()
	if s.BatchSizes[0] != 5 || s.BatchRecords != 5 || s.Batches != 5 {
		t.Fatalf("after 5 lone decisions: sizes %v, records %d, batches %d", s.BatchSizes, s.BatchRecords, s.Batches)
	}
	// Concurrently: batches share fsyncs; the histogram still adds up.
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			if err := decide(uint32(100 + i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	s = l.Stats()
	var n int64
	for _, c := range s.BatchSizes {
		n += c
	}
	if n != s.Batches || s.BatchRecords != 69 || s.Failed {
		t.Fatalf("histogram counts %d batches of %d, records %d (want 69), failed %v", n, s.Batches, s.BatchRecords, s.Failed)
	}
}
