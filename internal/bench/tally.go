package bench

import (
	"slices"
	"time"
)

// worker is one client's tally.
type worker struct {
	lat                                  []time.Duration
	committed, pending, aborted, inDoubt int64
	errs                                 []string
}

// rewarm is the unmeasured ramp-up of every round after a mode's
// first at a level.
const rewarm = 300 * time.Millisecond

// tally adds up one mode's rounds at one level.
type tally struct {
	lat                                  []time.Duration
	committed, pending, aborted, inDoubt int64
	errs                                 []string
	measured, cpu                        time.Duration
	machBusy, machTotal                  time.Duration
	machOK                               bool
	fsyncs                               int64
	storeBatches, storeRequests          int64 // pgstore.Stats in the measured windows
	storeTime                            time.Duration
	servers                              map[string]time.Duration
}

func (t *tally) result(mode string, clients int) Result {
	res := Result{Mode: mode, Clients: clients, Committed: t.committed, Pending: t.pending,
		Aborted: t.aborted, InDoubt: t.inDoubt, Errors: t.errs, LogFsyncs: t.fsyncs, StoreRoundTrips: t.storeBatches}
	if t.storeBatches > 0 {
		res.StoreReqsBatch = float64(t.storeRequests) / float64(t.storeBatches)
		res.StoreRTms = ms(t.storeTime) / float64(t.storeBatches)
	}
	slices.Sort(t.lat)
	res.Seconds = t.measured.Seconds()
	if res.Seconds > 0 {
		res.TPS = float64(t.committed) / res.Seconds
	}
	res.P50ms = ms(percentile(t.lat, 0.50))
	res.P95ms = ms(percentile(t.lat, 0.95))
	res.P99ms = ms(percentile(t.lat, 0.99))
	if len(t.lat) > 0 {
		res.Maxms = ms(t.lat[len(t.lat)-1])
	}
	if t.committed > 0 {
		tx := float64(t.committed)
		res.FsyncsTx = float64(t.fsyncs) / tx
		res.StoreRTTx = float64(t.storeBatches) / tx
		res.CPUusTx = float64(t.cpu.Microseconds()) / tx
		if t.machOK {
			res.MachineCPU = float64(t.machBusy.Microseconds()) / tx
		}
		res.PGCPU = float64(t.servers["postgres"].Microseconds()) / tx
		res.MyCPU = float64(t.servers["mysql"].Microseconds()) / tx
	}
	if t.machOK && t.machTotal > 0 {
		res.MachineBusy = 100 * float64(t.machBusy) / float64(t.machTotal)
	}
	return res
}
