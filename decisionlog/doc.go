// Package decisionlog holds the coordinator's durable record of what it
// decided: the Log contract, its one Decision type (also what decision
// keepers hold), the fence rule (AdmitCommit), the embedded FileLog and an
// in-memory Log (MemLog). Recovery needs this package, not the coordinator.
// Every Log implementation passes the conformance suite in
// decisionlog/logtest.
//
// # The file log on disk
//
// FileLog appends to one file, xabridge.log, in group-commit batches: one
// write and (for batches someone waits for) one fsync each. The file format
// is described in filelog_format.go: a header naming the node the log
// belongs to, then batches, each sealed by a frame carrying the batch's
// sequence number and the offset up to which an fsync had returned when it
// was written. Every frame is checksummed (CRC-32C) and every frame is
// checked again on every open.
//
// What an open does with damage follows from one rule: bytes an fsync was
// confirmed for hold records a caller may have been told are durable, and
// are never cut; bytes no fsync was confirmed for were never acknowledged.
// A later seal is the proof of an earlier fsync. So a crash during an fsync
// that leaves an earlier page zeroed before later valid frames is cut (the
// frames after it belong to the same unconfirmed writes), while damage below
// an offset a seal records as durable is refused with the offset, the seal
// that proves it and the records affected. xabridge log verify reports the
// same, read-only; xabridge log repair cuts what an open would cut and
// keeps a copy of it. After a write or fsync error the writer fail-stops and
// leaves xabridge.log.failed with the offset it was durable up to: the next
// open cuts what follows it, even if the page cache still shows those bytes
// intact, and reads the file after dropping its cached pages.
//
// The bytes of the last batch are the exception the file alone cannot
// settle: if it is damaged, nothing after it proves its fsync returned, so
// it is taken as torn. On a disk that honours fsync that is exact (damage
// there means its fsync never returned, so nobody was told); on a disk that
// loses acknowledged writes nothing in the file can tell.
//
// # Identity and stale copies
//
// A log created by a coordinator (FileLogOptions.Node) names its node in the
// header, and opening it as another node fails with ErrWrongNode: a log
// copied to the wrong host, or a --log-dir typo that lands on another
// node's log, is refused instead of used. A file that is empty, zero-filled
// or has no header is never taken for an empty log by a read-only opener
// (ErrNoLog): recovery on it would presume every committed transaction of
// the node aborted.
//
// A stale copy of the right node's log (restored from an old backup, or an
// old disk snapshot) cannot be recognised from the file alone: it is a
// well-formed log that simply ends earlier, exactly like the real log did at
// that moment. Truncation to a batch boundary is undetectable the same way.
// What the log offers is a sequence number that only grows (each sealed
// batch's, kept across compactions; FileLogStats.LastBatch, shown by log
// verify with the time of that batch): compared with a reference kept
// elsewhere (the coordinator's metrics, its last log line, a monitoring
// system) it tells a stale copy. An operator who restores a log from a copy
// must assume that every transaction decided after the copy was taken is
// unknown to it: before running recovery, check the databases for prepared
// branches of the node newer than the copy, and resolve them by hand (a
// branch whose transaction committed elsewhere must be committed), because
// recovery would presume them aborted.
//
// # Memory
//
// A transaction whose phase 2 ended costs 16 bytes in memory (doneSet) until
// a compaction forgets it with its records; its participants and actions
// are dropped at once, unless it has a heuristic action.
package decisionlog
