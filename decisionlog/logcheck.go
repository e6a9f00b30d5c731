package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// LogReport is what VerifyLog (or RepairLog) found in a decision log file.
type LogReport struct {
	Path        string
	Version     int    // format version; 0 when the file holds no initialised log
	Node        string // the node the log belongs to ("" when unbound)
	Size        int64
	Records     int       // intact, acknowledged records
	Batches     int       // sealed batches
	LastBatch   uint64    // sequence number of the last sealed batch
	LastBatchAt time.Time // when it was written
	DurableTo   int64     // the furthest offset a seal records as durable (-1: none)
	FailMarker  int64     // the durable offset a fail-stopped writer left (-1: none)
	// Cut is the never-acknowledged region an open (or repair) cuts; nil
	// when there is none.
	Cut *CutRegion
	// Damage, when set, is damage to acknowledged records (it wraps
	// ErrCorruptLog): nothing may be cut, a person must look.
	Damage error
	// Saved is the file RepairLog copied the cut region to.
	Saved string
}

// Intact reports whether the log opens without cutting anything.
func (r LogReport) Intact() bool { return r.Version != 0 && r.Cut == nil && r.Damage == nil }

// VerifyLog checks the decision log in dir without changing anything and
// without taking its lock (a coordinator may be running: its last batch may
// be in flight and is then reported as a region to cut). The error is for
// a log it could not read at all; what it found is in the report.
func VerifyLog(dir string) (LogReport, error) {
	path := filepath.Join(dir, logFileName)
	f, err := os.Open(path)
	if err != nil {
		return LogReport{Path: path}, fmt.Errorf("decisionlog: verify: %w", err)
	}
	defer f.Close()
	return verifyFile(dir, f)
}

func verifyFile(dir string, f *os.File) (LogReport, error) {
	rep := LogReport{Path: f.Name(), FailMarker: -1, DurableTo: -1}
	fi, err := f.Stat()
	if err != nil {
		return rep, fmt.Errorf("decisionlog: verify: %w", err)
	}
	mark, err := readFailMarker(dir)
	if err != nil {
		rep.Damage = err
		return rep, nil
	}
	rep.FailMarker = mark.durable
	res, err := scanFile(f, fi.Size(), mark, func(*logRecord, int) {})
	if err != nil && !errors.Is(err, ErrCorruptLog) {
		return rep, fmt.Errorf("decisionlog: verify %s: %w", rep.Path, err)
	}
	rep.Damage = err
	rep.Version, rep.Node, rep.Size = res.version, res.node, fi.Size()
	rep.Records, rep.Batches, rep.LastBatch, rep.LastBatchAt = res.records, res.batches, res.lastSeq, res.lastSeal
	rep.DurableTo = res.durableTo
	if err == nil {
		rep.Cut = res.cut
	}
	return rep, nil
}

// RepairLog cuts the never-acknowledged region of the decision log in dir,
// as a coordinator's open would, after copying it to a file beside the log
// (LogReport.Saved). It takes the log's lock (ErrLogLocked while a
// coordinator runs). It refuses, changing nothing, when acknowledged records
// are damaged (an error wrapping ErrCorruptLog) or when the file holds no
// initialised log (ErrNoLog).
func RepairLog(dir string) (LogReport, error) {
	lock, err := lockDir(dir)
	if err != nil {
		return LogReport{}, err
	}
	defer lock.Close()
	path := filepath.Join(dir, logFileName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return LogReport{Path: path}, fmt.Errorf("decisionlog: repair: %w", err)
	}
	defer f.Close()
	dropCache(f)
	rep, err := verifyFile(dir, f)
	switch {
	case err != nil:
		return rep, err
	case rep.Damage != nil:
		return rep, fmt.Errorf("decisionlog: repair %s: refusing to cut acknowledged records: %w", path, rep.Damage)
	case rep.Version == 0:
		return rep, fmt.Errorf("decisionlog: repair %s: %w (empty, zero-filled or no header: nothing to repair)", path, ErrNoLog)
	case rep.Cut == nil:
		return rep, clearFailMarker(dir)
	}
	c := *rep.Cut
	if len(c.Records) == 0 {
		c.Records = []string{"(no intact record)"} // keep the bytes anyway: repair always keeps what it cut
	}
	if rep.Saved, err = saveCut(dir, f, &c); err != nil {
		return rep, fmt.Errorf("decisionlog: repair %s: keep a copy of the cut region: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return rep, fmt.Errorf("decisionlog: repair %s: %w", path, err)
	}
	if err := f.Truncate(rep.Cut.Offset); err != nil {
		return rep, fmt.Errorf("decisionlog: repair %s: cut at offset %d: %w", path, rep.Cut.Offset, err)
	}
	if err := f.Sync(); err != nil {
		return rep, fmt.Errorf("decisionlog: repair %s: %w", path, err)
	}
	return rep, clearFailMarker(dir)
}
