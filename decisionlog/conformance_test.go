package decisionlog_test

import (
	"context"
	"testing"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/decisionlog/logtest"
)

func TestMemLogConformance(t *testing.T) {
	logtest.Run(t, func(t *testing.T, clock *logtest.Clock) logtest.Harness {
		l := decisionlog.NewMemLog(clock.Now)
		return logtest.Harness{Log: l, Fail: l.FailWith}
	})
}

func TestFileLogConformance(t *testing.T) {
	logtest.Run(t, func(t *testing.T, clock *logtest.Clock) logtest.Harness {
		dir := t.TempDir()
		var cur *decisionlog.FileLog
		var fail func(error)
		open := func(t *testing.T) decisionlog.Log {
			t.Helper()
			l, f, err := decisionlog.OpenFileLogFailable(dir, decisionlog.FileLogOptions{Now: clock.Now})
			if err != nil {
				t.Fatalf("OpenFileLog: %v", err)
			}
			cur, fail = l, f
			return l
		}
		first := open(t)
		return logtest.Harness{
			Log: first,
			Reopen: func(t *testing.T) decisionlog.Log {
				_ = cur.Close()
				return open(t)
			},
			Compact: func(ctx context.Context) error { return cur.Compact(ctx) },
			Fail:    func(err error) { fail(err) },
		}
	})
}
