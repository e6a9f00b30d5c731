package drivers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// judgeClock turns an offset and its round trip into a verdict, giving the
// measurement the benefit of its uncertainty.
func TestJudgeClock(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name        string
		offset, rtt time.Duration
		want        CheckStatus
		detail      []string // substrings of Detail
	}{
		{"in sync", 2 * ms, ms, CheckOK, []string{"2.0ms ahead of this host (±500µs)"}},
		{"behind, in sync", -800 * ms, ms, CheckOK, []string{"800.0ms behind"}},
		{"over the warn line", 1500 * ms, ms, CheckWarn, []string{"1.5s ahead", "over 1.0s", "ages and fences"}},
		{"behind over the warn line", -5 * time.Second, 10 * ms, CheckWarn, []string{"5.0s behind"}},
		{"within the uncertainty of the warn line", 1100 * ms, 400 * ms, CheckOK, nil},
		{"over the fail line", -45 * time.Second, 2 * ms, CheckFail, []string{"45.0s behind", "over 30.0s", "fence"}},
		{"fail line minus uncertainty is only a warning", 31 * time.Second, 4 * time.Second, CheckWarn, nil},
		{"too slow to measure", 10 * ms, 3 * time.Second, CheckWarn, []string{"too slow"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := judgeClock(tt.offset, tt.rtt)
			if c.Name != "clock" || c.Status != tt.want {
				t.Fatalf("judgeClock(%v, %v) = %s %q, want %s", tt.offset, tt.rtt, c.Status, c.Detail, tt.want)
			}
			for _, s := range tt.detail {
				if !strings.Contains(c.Detail, s) {
					t.Errorf("Detail %q does not contain %q", c.Detail, s)
				}
			}
			if (c.Status == CheckOK) != (c.Fix == "") {
				t.Errorf("status %s with Fix %q: a fix belongs to every non-ok check and only to them", c.Status, c.Fix)
			}
		})
	}
}

// ClockCheck keeps the sample with the shortest round trip and compares the
// server's time with that round trip's midpoint.
func TestClockCheckUsesTheShortestRoundTrip(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// A fake local clock: each sample's round trip is rtts[i]; the server's
	// answer is the true midpoint plus 40s, except for the slow samples,
	// whose answers are skewed by their slowness and must be ignored.
	rtts := []time.Duration{900 * time.Millisecond, 2 * time.Millisecond, 700 * time.Millisecond, 3 * time.Millisecond, time.Second}
	var now time.Time
	reads, sample := 0, 0
	clock := func() time.Time {
		reads++
		return now
	}
	server := func(ctx context.Context) (time.Time, error) {
		mid := now.Add(rtts[sample] / 2)
		ans := mid.Add(40 * time.Second)
		if rtts[sample] > 100*time.Millisecond {
			ans = ans.Add(rtts[sample]) // skewed answers the check must not use
		}
		now = now.Add(rtts[sample])
		sample++
		return ans, nil
	}
	now = base
	c := ClockCheck(context.Background(), clock, server)
	if sample != clockSamples || reads != 2*clockSamples {
		t.Fatalf("%d samples, %d clock reads; want %d and %d", sample, reads, clockSamples, 2*clockSamples)
	}
	if c.Status != CheckFail || !strings.Contains(c.Detail, "40.0s ahead of this host (±1.0ms)") {
		t.Fatalf("got %s %q, want fail with a 40.0s offset measured ±1.0ms", c.Status, c.Detail)
	}
}

// A server that cannot be read fails the check with the error; a clock that
// steps back on every sample makes it a warning, never a bogus offset.
func TestClockCheckErrors(t *testing.T) {
	boom := errors.New("connection reset")
	c := ClockCheck(context.Background(), time.Now, func(context.Context) (time.Time, error) { return time.Time{}, boom })
	if c.Status != CheckFail || !strings.Contains(c.Detail, "connection reset") {
		t.Errorf("server error: got %s %q", c.Status, c.Detail)
	}
	t0 := time.Now()
	n := 0
	back := func() time.Time { n++; return t0.Add(-time.Duration(n) * time.Second) }
	c = ClockCheck(context.Background(), back, func(context.Context) (time.Time, error) { return t0, nil })
	if c.Status != CheckWarn || !strings.Contains(c.Detail, "stepped back") {
		t.Errorf("backwards clock: got %s %q", c.Status, c.Detail)
	}
}

func TestFormatAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{850 * time.Microsecond, "850µs"},
		{12300 * time.Microsecond, "12.3ms"},
		{4200 * time.Millisecond, "4.2s"},
		{3*time.Minute + 7*time.Second, "3m7s"},
		{time.Hour, "1h"},
		{5*time.Hour + 2*time.Minute, "5h2m"},
		{12*24*time.Hour + 4*time.Hour, "12d4h"},
		{90 * 24 * time.Hour, "90d"},
		{-2 * time.Second, "-2.0s"},
	}
	for _, tt := range tests {
		if got := FormatAge(tt.d); got != tt.want {
			t.Errorf("FormatAge(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestDoctorOptionsWithDefaults(t *testing.T) {
	o := DoctorOptions{}.WithDefaults()
	if o.MaxPreparedAge != DefaultMaxPreparedAge || o.Now == nil {
		t.Errorf("zero options: %+v", o)
	}
	fixed := time.Unix(1, 0)
	o = DoctorOptions{MaxPreparedAge: time.Minute, Now: func() time.Time { return fixed }}.WithDefaults()
	if o.MaxPreparedAge != time.Minute || !o.Now().Equal(fixed) {
		t.Errorf("set options were changed: %+v", o)
	}
}
