package crashcheck

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xabridge/xabridge/xa"
)

func TestParseCrashPoint(t *testing.T) {
	for _, tc := range []struct {
		in      string
		step    xa.Step
		branch  int
		decided bool
		err     string
	}{
		{"after-enlist:1", xa.StepEnlisted, 1, false, ""},
		{"after-prepare:0", xa.StepPrepared, 0, false, ""},
		{"after-decision", xa.StepDecided, -1, true, ""},
		{"after-commit:1", xa.StepCommitted, 1, true, ""},
		{"before-end", xa.StepAllCommitted, -1, true, ""},
		{"after-work", xa.StepWorkDone, -1, false, ""},
		{"after-prepare", "", 0, false, "needs a branch number"},
		{"after-decision:1", "", 0, false, "takes no branch number"},
		{"after-commit:x", "", 0, false, "branch must be a number"},
		{"after-commit:300", "", 0, false, "branch must be a number"},
		{"sometime", "", 0, false, "unknown crash point"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			cp, err := ParseCrashPoint(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil || cp.Step != tc.step || cp.Branch != tc.branch || cp.Decided() != tc.decided {
				t.Fatalf("got %+v decided %v, %v", cp, cp.Decided(), err)
			}
		})
	}
	for _, p := range MatrixPoints() {
		if _, err := ParseCrashPoint(p); err != nil {
			t.Errorf("matrix point %s: %v", p, err)
		}
	}
}

// The hook fires once, at the nth matching event, from concurrent callers.
func TestHookFiresOnceAtNth(t *testing.T) {
	cp, _ := ParseCrashPoint("after-commit:1")
	var mu sync.Mutex
	var fired []xa.StepInfo
	h := cp.Hook(3, func(_ xa.Step, info xa.StepInfo) {
		mu.Lock()
		fired = append(fired, info)
		mu.Unlock()
	})
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h(xa.StepCommitted, xa.StepInfo{Branch: 0}) // other branch: no match
			h(xa.StepPrepared, xa.StepInfo{Branch: 1})  // other step: no match
			h(xa.StepCommitted, xa.StepInfo{Branch: 1})
		}()
	}
	wg.Wait()
	if len(fired) != 1 || fired[0].Branch != 1 {
		t.Fatalf("fired %v, want once for branch 1", fired)
	}
}

func TestCrashFromEnv(t *testing.T) {
	t.Setenv(EnvCrashPoint, "")
	if _, _, ok, err := CrashFromEnv(); ok || err != nil {
		t.Fatalf("unset: armed %v, %v", ok, err)
	}
	t.Setenv(EnvCrashPoint, "after-decision")
	t.Setenv(EnvCrashNth, "4")
	if cp, nth, ok, err := CrashFromEnv(); !ok || err != nil || nth != 4 || cp.Step != xa.StepDecided {
		t.Fatalf("got %v %d %v %v", cp, nth, ok, err)
	}
	t.Setenv(EnvCrashNth, "0")
	if _, _, _, err := CrashFromEnv(); err == nil {
		t.Fatal("nth 0 accepted")
	}
}

func TestReadJournal(t *testing.T) {
	in := "begin a\nbegin b\nend a committed\nnote crash after-decision b\nbegin c\nend c aborted\nbegin d\nend d pen"
	j, err := ReadJournal(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Journal{"a": Committed, "b": InFlight, "c": Aborted, "d": InFlight}
	for id, o := range want {
		if j[id] != o {
			t.Errorf("%s: %q, want %q", id, j[id], o)
		}
	}
	// The torn last line is forgiven, a malformed line in the middle is not.
	if _, err := ReadJournal(strings.NewReader("begin a\ngarbage here now\nbegin b\n")); err == nil {
		t.Fatal("malformed journal accepted")
	}
	if c := j.Count(); c[InFlight] != 2 || c[Committed] != 1 {
		t.Fatalf("count %v", c)
	}
}

func TestOutcomeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Outcome
	}{
		{nil, Committed},
		{&xa.Error{Outcome: xa.CommitPending}, Pending},
		{&xa.Error{Outcome: xa.Unknown}, Unknown},
		{&xa.Error{Outcome: xa.Aborted}, Aborted},
		{errors.New("anything else"), Aborted},
	} {
		if got := OutcomeOf(tc.err); got != tc.want {
			t.Errorf("OutcomeOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestChildConfigValidate(t *testing.T) {
	ok := ChildConfig{PGURL: "p", MyURL: "m", LogDir: "/tmp/x", Node: "n1", Order: Mixed, Workers: 1, Accounts: 1}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*ChildConfig){
		"no url":           func(c *ChildConfig) { c.PGURL = "" },
		"no log":           func(c *ChildConfig) { c.LogDir = "" },
		"bad node":         func(c *ChildConfig) { c.Node = "Bad Node" },
		"bad order":        func(c *ChildConfig) { c.Order = "random" },
		"no workers":       func(c *ChildConfig) { c.Workers = 0 },
		"no accounts":      func(c *ChildConfig) { c.Accounts = 0 },
		"minus count":      func(c *ChildConfig) { c.Count = -1 },
		"bad keeper":       func(c *ChildConfig) { c.Keeper = "oracle" },
		"no log, no store": func(c *ChildConfig) { c.LogDir, c.Store.URL = "", "" },
		"minus ttl":        func(c *ChildConfig) { c.LogDir, c.Store = "", StoreConfig{URL: "s", LeaseTTL: -1} },
		"minus interval":   func(c *ChildConfig) { c.LogDir, c.Store = "", StoreConfig{URL: "s", RecoverEvery: -1} },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestChildConfigValidateStore(t *testing.T) {
	c := ChildConfig{PGURL: "p", MyURL: "m", Store: StoreConfig{URL: "postgres://x/store", LeaseTTL: time.Second}, Node: "n1", Order: Mixed, Workers: 1, Accounts: 1}
	if err := c.Validate(); err != nil {
		t.Fatalf("a store instead of a log directory: %v", err)
	}
}

func TestStoreTable(t *testing.T) {
	for _, tc := range []struct {
		schema, want string
		bad          bool
	}{
		{"", "xabridge_store_nodes", false},
		{"ha_01ab", "ha_01ab.xabridge_store_nodes", false},
		{"Public", "", true},
		{"a;drop", "", true},
		{"a.b", "", true},
	} {
		got, err := storeTable(tc.schema, "xabridge_store_nodes")
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("storeTable(%q) = %q, %v; want %q, error %v", tc.schema, got, err, tc.want, tc.bad)
		}
	}
}

func TestParseKeeper(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Keeper
		ok   bool
	}{
		{"", KeeperNone, true}, {"log", KeeperNone, true}, {"pg", KeeperPG, true}, {"mysql", KeeperMy, true},
		{"postgres", "", false}, {"PG", "", false}, {"oracle", "", false},
	} {
		got, err := ParseKeeper(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseKeeper(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
