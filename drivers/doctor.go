package drivers

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"
)

// CheckStatus is the verdict of one readiness check.
type CheckStatus string

// The verdicts, from best to worst.
const (
	// CheckOK: nothing to do.
	CheckOK CheckStatus = "ok"
	// CheckWarn: two-phase commit works, but something deserves attention.
	CheckWarn CheckStatus = "warn"
	// CheckFail: two-phase commit cannot work (or the check could not run).
	CheckFail CheckStatus = "fail"
)

// Check is one finding about a resource's readiness for two-phase commit.
type Check struct {
	// Name is a short stable identifier ("max_prepared_transactions",
	// "clock", ...), the same for every run.
	Name string
	// Status is the verdict.
	Status CheckStatus
	// Detail says what was found, in one line. Values that come from the
	// database (identifiers, gids) are quoted when they are not plain text.
	Detail string
	// Fix is a one-line remedy; empty when Status is CheckOK.
	Fix string
}

// DefaultMaxPreparedAge is DoctorOptions.MaxPreparedAge when unset.
const DefaultMaxPreparedAge = time.Hour

// DoctorOptions configures a Doctor run.
type DoctorOptions struct {
	// MaxPreparedAge: prepared transactions older than this are reported
	// (they hold locks, and on PostgreSQL hold back VACUUM). Zero means
	// DefaultMaxPreparedAge.
	MaxPreparedAge time.Duration
	// Now is this host's clock, for ages and the clock check (default
	// time.Now).
	Now func() time.Time
}

// WithDefaults returns o with its zero fields set to their defaults.
func (o DoctorOptions) WithDefaults() DoctorOptions {
	if o.MaxPreparedAge <= 0 {
		o.MaxPreparedAge = DefaultMaxPreparedAge
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Doctor is implemented by resources that can check whether their server is
// ready for two-phase commit: settings, privileges, prepared transactions
// left behind, clock. It is optional, like the optional interfaces of
// database/sql/driver.
type Doctor interface {
	// Doctor runs the checks and returns one Check per finding, in a stable
	// order. It never returns an empty list: a server that cannot be
	// reached is one CheckFail named "connect". Errors never contain
	// passwords.
	Doctor(ctx context.Context, opts DoctorOptions) []Check
}

// Clock offsets (server clock minus this host's) that ClockCheck reports.
const (
	// ClockWarnOffset: hosts kept in sync by NTP are within milliseconds of
	// each other, so an offset this large means a clock is not synchronised.
	ClockWarnOffset = time.Second
	// ClockFailOffset is the coordinator's default transaction timeout, the
	// window between a transaction's begin time and its fence deadline (both
	// read from the coordinator's clock and written into the XID). Once two
	// clocks differ by as much, a host reading another's XIDs cannot tell a
	// live transaction from one past its fence.
	ClockFailOffset = 30 * time.Second
)

// clockSamples is how many round trips ClockCheck makes; it keeps the one
// with the shortest round trip, the least uncertain.
const clockSamples = 5

// ClockCheck measures the offset between the database server's clock and
// this host's and turns it into the Check named "clock". now is this
// host's clock (DoctorOptions.Now); serverTime must return the server's
// current time as read while the call runs (PostgreSQL: clock_timestamp()).
// Each sample compares the server's time with the local midpoint of its
// round trip, so a measurement is accurate to half its round trip; the
// sample with the shortest round trip is used.
func ClockCheck(ctx context.Context, now func() time.Time, serverTime func(context.Context) (time.Time, error)) Check {
	const name = "clock"
	var (
		best    time.Duration = -1
		bestOff time.Duration
	)
	for range clockSamples {
		t0 := now()
		ts, err := serverTime(ctx)
		t1 := now()
		if err != nil {
			return Check{Name: name, Status: CheckFail, Detail: "cannot read the server's clock: " + err.Error(),
				Fix: "check the connection and retry"}
		}
		rtt := t1.Sub(t0)
		if rtt < 0 { // a clock stepped back during the round trip
			continue
		}
		if best < 0 || rtt < best {
			best, bestOff = rtt, ts.Sub(t0.Add(rtt/2))
		}
	}
	if best < 0 {
		return Check{Name: name, Status: CheckWarn, Detail: "this host's clock stepped back during every measurement",
			Fix: "synchronise this host's clock (NTP: chrony or systemd-timesyncd) and run doctor again"}
	}
	return judgeClock(bestOff, best)
}

// judgeClock turns a measured offset and its round trip into the "clock"
// Check. The verdict uses the smallest offset the measurement allows
// (offset minus half the round trip), so a slow network alone never fails
// the check.
func judgeClock(offset, rtt time.Duration) Check {
	c := Check{Name: "clock", Status: CheckOK}
	abs := offset
	if abs < 0 {
		abs = -abs
	}
	side := "ahead of"
	if offset < 0 {
		side = "behind"
	}
	c.Detail = fmt.Sprintf("server clock %s %s this host (±%s)", FormatAge(abs), side, FormatAge(rtt/2))
	lower := abs - rtt/2
	switch {
	case lower > ClockFailOffset:
		c.Status = CheckFail
		c.Detail += fmt.Sprintf(": over %s, the default span between a transaction's begin and its fence deadline, which XIDs carry in the coordinator's clock and recovery reads with its own", FormatAge(ClockFailOffset))
	case lower > ClockWarnOffset:
		c.Status = CheckWarn
		c.Detail += fmt.Sprintf(": over %s, so transaction ages and fences read on different hosts are off by as much", FormatAge(ClockWarnOffset))
	case rtt/2 > ClockWarnOffset:
		c.Status = CheckWarn
		c.Detail += ": the round trip was too slow to measure the offset to better than " + FormatAge(ClockWarnOffset)
		c.Fix = "run doctor again closer to the server, or when the network is less loaded"
		return c
	default:
		return c
	}
	c.Fix = "synchronise the clocks of this host and the database server with NTP (chrony or systemd-timesyncd)"
	return c
}

// FormatAge formats a non-negative duration compactly for check details:
// "850µs", "12.3ms", "4.2s", "3m7s", "5h2m", "1h", "12d4h", "90d".
func FormatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + FormatAge(-d)
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return roundSig(d, time.Millisecond)
	case d < time.Minute:
		return roundSig(d, time.Second)
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		m := int(d.Round(time.Minute).Minutes())
		if m%60 == 0 {
			return fmt.Sprintf("%dh", m/60)
		}
		return fmt.Sprintf("%dh%dm", m/60, m%60)
	default:
		h := int(math.Round(d.Hours()))
		if h%24 == 0 {
			return fmt.Sprintf("%dd", h/24)
		}
		return fmt.Sprintf("%dd%dh", h/24, h%24)
	}
}

// roundSig prints d in unit with one decimal ("12.3ms", "4.2s").
func roundSig(d, unit time.Duration) string {
	v := float64(d) / float64(unit)
	suffix := "ms"
	if unit == time.Second {
		suffix = "s"
	}
	return fmt.Sprintf("%.1f%s", v, suffix)
}

// maxDisplay bounds how much of a database-supplied string DisplayID shows.
const maxDisplay = 100

// DisplayID shows a database-supplied identifier or gid safely: as is when
// it is plain printable ASCII without quotes, backslashes or spaces,
// otherwise Go-quoted, so a hostile gid cannot break a table, a terminal or
// the reader's trust in what is shown. Strings over 100 bytes are cut: for
// prose (doctor's details); tables an operator copies from use QuoteID.
func DisplayID(s string) string {
	if len(s) > maxDisplay {
		return QuoteID(s[:maxDisplay]) + "…"
	}
	return QuoteID(s)
}

// QuoteID is DisplayID without the cut: the whole identifier, as is when
// plain, Go-quoted otherwise, so that an operator can copy it from a table
// (a MySQL XID shown as X'gtrid',X'bqual',formatID runs to 280 bytes; a
// PostgreSQL gid to 200).
func QuoteID(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '"' || c == '\'' || c == '\\' || c == '`' {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return strconv.Quote(s)
	}
	return s
}
