package selfcheck

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// startBar shows a progress bar over the duration, refreshed until the
// returned stop function is called.
func startBar(w io.Writer, show bool, d time.Duration, start time.Time, describe func() string) (stop func()) {
	if !show {
		return func() {}
	}
	bar := progressbar.NewOptions64(int64(d/time.Second),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetDescription(describe()),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionThrottle(200*time.Millisecond),
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				bar.Describe(describe())
				_ = bar.Set64(min(int64(time.Since(start)/time.Second), int64(d/time.Second)))
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
			bar.Describe(describe())
			_ = bar.Finish()
			fmt.Fprintln(w)
		})
	}
}
