package xa

import (
	"context"
	"math/rand/v2"
	"time"
)

// RetryPolicy says how RunRetry runs a global transaction again after a
// contention abort. The zero value is a sensible default.
type RetryPolicy struct {
	// MaxAttempts bounds how many times the transaction runs, the first
	// included (default 5; 1 never retries).
	MaxAttempts int
	// BaseDelay is the backoff before the second run (default 10ms); it
	// doubles for each later one, up to MaxDelay (default 1s).
	BaseDelay time.Duration
	MaxDelay  time.Duration
	// Jitter turns a backoff into the actual wait, so that transactions
	// that collided do not collide again in step. Default: uniformly random
	// between half the backoff and the backoff ("equal jitter").
	Jitter func(backoff time.Duration) time.Duration

	// sleep waits d or until ctx ends (tests replace it).
	sleep func(ctx context.Context, d time.Duration) error
}

// Defaults of RetryPolicy.
const (
	defaultRetryAttempts  = 5
	defaultRetryBaseDelay = 10 * time.Millisecond
	defaultRetryMaxDelay  = time.Second
)

// RunRetry is Run, run again while the transaction aborts for a reason a
// new attempt may cure: Retryable errors, that is a deadlock, a
// serialization failure or a lock wait timeout reported by a database (in
// the callback's work, at prepare, or at a one-phase commit), or the fence.
// Every attempt is a new global transaction and calls fn afresh, so fn must
// do all of its work through the tx it is given.
//
// It never retries ErrCommitPending or ErrOutcomeUnknown (the transaction
// may have committed), an application error that does not wrap a
// contention error, or a panic. It waits between attempts with exponential
// backoff and jitter, stops once ctx ends or after MaxAttempts, and returns
// the last attempt's error.
func (c *Coordinator) RunRetry(ctx context.Context, p RetryPolicy, fn func(ctx context.Context, tx *Tx) error) error {
	p = p.withDefaults()
	for attempt := 1; ; attempt++ {
		err := c.Run(ctx, fn)
		if err == nil || attempt >= p.MaxAttempts || !Retryable(err) || ctx.Err() != nil {
			return err
		}
		wait := p.Jitter(p.backoff(attempt))
		c.logger.Debug("transaction aborted by contention; running it again",
			"attempt", attempt, "wait", wait, "reason", ReasonOf(err), "err", err)
		if p.sleep(ctx, wait) != nil {
			return err // ctx ended while waiting: the last abort is the answer
		}
	}
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = defaultRetryAttempts
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = defaultRetryBaseDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = defaultRetryMaxDelay
	}
	p.MaxDelay = max(p.MaxDelay, p.BaseDelay)
	if p.Jitter == nil {
		p.Jitter = equalJitter
	}
	if p.sleep == nil {
		p.sleep = sleepCtx
	}
	return p
}

// backoff is the wait before attempt+1, before jitter: BaseDelay doubled
// for each attempt after the first, capped at MaxDelay.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.BaseDelay
	for i := 1; i < attempt && d < p.MaxDelay; i++ {
		d *= 2
	}
	return min(d, p.MaxDelay)
}

// equalJitter returns a random wait in [d/2, d].
func equalJitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d-d/2+1)
}

// sleepCtx waits d, or returns ctx's error if it ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
