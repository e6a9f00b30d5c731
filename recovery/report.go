package recovery

import (
	"time"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
)

// Class is what recovery concluded about one prepared branch.
type Class string

// The classes of prepared branches.
const (
	// CommitPending: the log holds a commit decision; the branch must commit.
	CommitPending Class = "commit-pending"
	// AbortPending: the log holds an abort record; the branch must roll back.
	AbortPending Class = "abort-pending"
	// Orphan: ours, no decision, past its fence. Rolled back once it has
	// been seen in two consecutive scans (presumed abort).
	Orphan Class = "orphan"
	// Live: ours and its coordinator may still be running it (it is active
	// in this process, or not yet past its fence). Left alone.
	Live Class = "live"
	// UnknownOwner: another coordinator node's transaction, whose log we
	// do not have. Left alone and reported.
	UnknownOwner Class = "unknown-owner"
	// Heuristic: the branch contradicts the log (for example the log says
	// every branch committed, or an operator forced an outcome). Reported
	// loudly; the log's decision, if any, is still applied.
	Heuristic Class = "heuristic"
	// Foreign: not created by xabridge, or not reachable through this
	// resource. Never touched.
	Foreign Class = "foreign"
	// WrongResource: ours, listed by a resource that is not the database
	// a decision names (another server, database or engine: a resource
	// name pointed at the wrong URL). Never touched, and no decision is
	// ended while it lasts; the resource is also in ScanErrors.
	WrongResource Class = "wrong-resource"
	// LogUnread: ours, but the decision log's read of its transaction
	// failed (a database store that could not be read): what was decided
	// is unknown. Never touched, and no decision is ended while it lasts;
	// Report.LogErr says why.
	LogUnread Class = "log-unread"
)

// Action is what recovery does (or would do) with a branch.
type Action string

// Actions recovery takes.
const (
	ActionNone     Action = "none"
	ActionCommit   Action = "commit"
	ActionRollback Action = "rollback"
	// ActionWait: the branch was not yet seen in an earlier scan at least
	// Settle ago; it is acted on at a later pass if still there.
	ActionWait Action = "wait"
)

// Branch is one prepared branch found on a resource, with what recovery
// concluded about it. For a branch of ours, XID.Label is its transaction's
// label (xa.Tx.SetLabel), read from the branch's own XID: it is there even
// when no decision was ever written.
type Branch struct {
	Resource string
	drivers.Prepared
	Class  Class
	Action Action
	Reason string
	// Attention is set on a branch of this node that needs an operator's or
	// recovery's attention: an orphan, a heuristic, an abort to finish, or
	// a commit decision whose phase 2 is still unfinished past the
	// transaction's fence. Live branches, and decided ones whose
	// coordinator may still be finishing phase 2 (within the fence), do
	// not need it: a busy, healthy service has many of those.
	Attention bool
	// Age is how long ago the transaction began (from its global id), or
	// since the database prepared it for foreign entries when known.
	Age time.Duration
	// LogState is what the decision log says about the transaction.
	LogState decisionlog.State
	// Result is the outcome of the action when one was taken: one of the
	// Result constants, or an error message (Err set).
	Result string
	// Err is the action's error, if it failed.
	Err error `json:"-"`

	// unconfirmed: classified heuristic, but the second listing that
	// tells a real heuristic from a branch its coordinator finished during
	// the scan failed; judged again at the next pass.
	unconfirmed bool
	// settling: the branch would be acted on but for the two-scan rule
	// (Config.Settle); a pass after Settle acts on it (PassSettled).
	settling bool
}

// pending reports whether b is one of this node's branches that is still
// prepared after the report's actions: any class but Foreign and
// UnknownOwner (other nodes' branches are reported, not counted) whose
// action did not finish it.
func (b *Branch) pending() bool {
	if b.Class == Foreign || b.Class == UnknownOwner {
		return false
	}
	finished := (b.Action == ActionCommit || b.Action == ActionRollback) && b.Err == nil && b.Result != "" && b.Result != ResultBusy
	return !finished
}

// InFlight reports whether b is a branch of this node, still prepared, that
// needs no attention: its coordinator may still be running it or finishing
// its phase 2.
func (b *Branch) InFlight() bool { return b.pending() && !b.Attention }

// ResourceError is a resource that could not be scanned. Recovery never
// fails silently: a scan error is reported and counted, and the pass
// continues with the other resources.
type ResourceError struct {
	Resource string
	Err      error
}

// ReportKind says what produced a Report.
type ReportKind string

// The kinds of Report.
const (
	KindScan    ReportKind = "scan"    // Scan: every resource listed, nothing done
	KindDryRun  ReportKind = "dry-run" // Pass with dryRun: every resource listed, nothing done
	KindPass    ReportKind = "pass"    // Pass: every resource listed, actions taken
	KindResolve ReportKind = "resolve" // Resolve: only the resolved transaction's branches
)

// Report is the result of one scan or pass.
type Report struct {
	Kind ReportKind
	At   time.Time
	// Duration is how long the scan, pass or resolve took.
	Duration time.Duration
	// Resources names every resource scanned, in configuration order
	// (those in ScanErrors could not be).
	Resources []string
	Branches  []Branch
	// ScanErrors lists resources that could not be scanned.
	ScanErrors []ResourceError
	// Ended lists commit decisions recovery found fully committed and marked
	// ended in the log, or deleted from a decision keeper's table.
	Ended []string
	// LogErr is the first failed read of the decision log (a
	// decisionlog.CheckedReader, such as a database store): the branches
	// whose decision could not be read are class LogUnread, and nothing is
	// ended. Nil when every read succeeded.
	LogErr error

	kept       map[drivers.GlobalID]kept // the keepers' decisions, read before the scan
	keptFailed []decisionlog.Keeper      // keepers whose decisions could not be read
	// noFenceTable: the DecisionResource has no decision table (a wrong
	// database); nothing may be presumed aborted.
	noFenceTable bool
	// listed holds the resources whose branches were listed; ids their
	// identities (drivers.Identifier), idErrs why one could not be read.
	listed map[string]bool
	ids    map[string]drivers.Identity
	idErrs map[string]error
	// wrong holds the resources whose identity contradicts a decision (or
	// could not be read to compare with one), and why.
	wrong map[string]error
}

// Unscanned returns the resources that could not be scanned, each once,
// in the order of ScanErrors: one resource may have several (its decision
// table and its branches), and counts once.
func (r *Report) Unscanned() []string {
	var out []string
	seen := map[string]bool{}
	for _, e := range r.ScanErrors {
		if !seen[e.Resource] {
			seen[e.Resource] = true
			out = append(out, e.Resource)
		}
	}
	return out
}

// Remaining counts this node's branches still prepared after the pass:
// every class but Foreign and UnknownOwner (other nodes' branches are
// reported, not counted) whose action did not finish them. It counts live
// branches too: it is zero only when nothing of this node is prepared.
// Remaining = NeedsAttention + InFlight.
func (r *Report) Remaining() int {
	return r.count(func(b *Branch) bool { return b.pending() })
}

// NeedsAttention counts the branches Remaining counts that need attention
// (Branch.Attention): the "stuck transactions" count, zero on a busy but
// healthy service.
func (r *Report) NeedsAttention() int {
	return r.count(func(b *Branch) bool { return b.pending() && b.Attention })
}

// InFlight counts the branches Remaining counts that need no attention
// (Branch.InFlight).
func (r *Report) InFlight() int {
	return r.count((*Branch).InFlight)
}

func (r *Report) count(f func(*Branch) bool) int {
	n := 0
	for i := range r.Branches {
		if f(&r.Branches[i]) {
			n++
		}
	}
	return n
}

// The results of an action (Branch.Result) other than a failure.
const (
	ResultCommitted       = "committed"
	ResultRolledBack      = "rolled back"
	ResultAlreadyFinished = "already finished"  // someone else finished the branch first
	ResultBusy            = "busy: retry later" // the branch's session is still closing; the next pass retries
)
