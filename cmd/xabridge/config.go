package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/decisionlog"
	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/redact"
	"github.com/xabridge/xabridge/internal/storeopt"
	_ "github.com/xabridge/xabridge/mysql"    // registers mysql:// and mariadb://
	_ "github.com/xabridge/xabridge/postgres" // registers postgres:// and postgresql://
)

// opsConfig is what the operator commands need: who we are (node id, log)
// and which databases to look at.
type opsConfig struct {
	nodeID     string
	logDir     string
	configFile string
	resources  []string // NAME=URL
	output     string   // table | json
	keeper     string   // --decision-resource
	nodeIDSet  bool     // --node-id was given (possibly empty)
	logDirSet  bool     // --log-dir was given (possibly empty)

	// The shared decision store (--store, --store-schema), on the commands
	// that take it (addStoreFlags sets withStore).
	withStore      bool
	store          string
	storeSchema    string
	storeSet       bool // --store was given (possibly empty)
	storeSchemaSet bool
	// resourcesOptional: no resource is not an error; storeOnly: the
	// command has no file-log mode (xabridge nodes).
	resourcesOptional, storeOnly bool
}

// fileConfig is the JSON config file (--config).
type fileConfig struct {
	NodeID           string            `json:"node_id"`
	LogDir           string            `json:"log_dir"`
	Resources        map[string]string `json:"resources"`
	DecisionResource string            `json:"decision_resource"`
	Store            string            `json:"store"`        // --store
	StoreSchema      string            `json:"store_schema"` // --store-schema
}

func addOpsFlags(cmd *cobra.Command, o *opsConfig, withOutput bool) {
	f := cmd.Flags()
	f.Var(&setString{&o.nodeID, &o.nodeIDSet}, "node-id", "coordinator node id whose transactions to act on (env XABRIDGE_NODE_ID; default demo)")
	f.Var(&setString{&o.logDir, &o.logDirSet}, "log-dir", "that node's decision log directory (env XABRIDGE_LOG_DIR; default .xabridge/log)")
	f.StringVar(&o.configFile, "config", "", `JSON config file: {"node_id": "...", "log_dir": "...", "resources": {"NAME": "URL"}, "decision_resource": "NAME"} (env XABRIDGE_CONFIG)`)
	f.StringArrayVar(&o.resources, "resource", nil, "a database as NAME=URL, repeatable (env XABRIDGE_RESOURCES, comma separated; default pg=$XABRIDGE_PG and mysql=$XABRIDGE_MYSQL)")
	f.StringVar(&o.keeper, "decision-resource", "", "the resource NAME the coordinator keeps its commit decisions in (xa.Config.DecisionResource), so that recovery fences orphans there (env XABRIDGE_DECISION_RESOURCE)")
	if withOutput {
		f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	}
}

// setString is a string flag that remembers it was given, even empty.
type setString struct {
	p   *string
	set *bool
}

func (s *setString) String() string { return *s.p }
func (s *setString) Type() string   { return "string" }
func (s *setString) Set(v string) error {
	*s.p, *s.set = v, true
	return nil
}

// resolved is the effective configuration.
type resolved struct {
	nodeID      string
	nodeIDGiven bool // by a flag, the environment or the config file (not the default)
	logDir      string
	resources   []namedURL
	output      string
	keeper      string // recovery.Config.DecisionResource
	// store is the shared decision store; when it is set, logDir is empty
	// (they exclude each other).
	store storeopt.Options
}

type namedURL struct{ name, url string }

// resolve applies flags over env over config file over defaults.
func (o *opsConfig) resolve() (*resolved, error) {
	r := &resolved{output: o.output}
	if r.output == "" {
		r.output = "table"
	}
	if r.output != "table" && r.output != "json" {
		return nil, usagef("--output must be table or json, not %q", r.output)
	}
	var fc fileConfig
	cfgPath := o.configFile
	if cfgPath == "" {
		cfgPath = os.Getenv("XABRIDGE_CONFIG")
	}
	if cfgPath != "" {
		var err error
		if fc, err = readConfigFile(cfgPath); err != nil {
			return nil, err
		}
	}
	if o.nodeIDSet && o.nodeID == "" {
		// An unset shell variable must not silently mean node "demo".
		return nil, usagef("--node-id is empty")
	}
	r.nodeID = first(o.nodeID, os.Getenv("XABRIDGE_NODE_ID"), fc.NodeID, "demo")
	r.nodeIDGiven = first(o.nodeID, os.Getenv("XABRIDGE_NODE_ID"), fc.NodeID) != ""
	if err := drivers.ValidateNodeID(r.nodeID); err != nil {
		return nil, usagef("--node-id: %v", err)
	}
	if o.logDirSet && o.logDir == "" {
		// Like an empty --node-id: never silently the default log.
		return nil, usagef("--log-dir is empty")
	}
	r.logDir = first(o.logDir, os.Getenv("XABRIDGE_LOG_DIR"), fc.LogDir, ".xabridge/log")
	if o.withStore {
		if err := o.resolveStore(r, fc); err != nil {
			return nil, err
		}
	}

	var specs []string
	switch {
	case len(o.resources) > 0:
		specs = o.resources
	case os.Getenv("XABRIDGE_RESOURCES") != "":
		for _, s := range strings.Split(os.Getenv("XABRIDGE_RESOURCES"), ",") {
			if s = strings.TrimSpace(s); s != "" {
				specs = append(specs, s)
			}
		}
	case len(fc.Resources) > 0:
		names := make([]string, 0, len(fc.Resources))
		for n := range fc.Resources {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			specs = append(specs, n+"="+fc.Resources[n])
		}
	default:
		// The demo's databases, named as the demo names them.
		if v := os.Getenv("XABRIDGE_PG"); v != "" {
			specs = append(specs, "pg="+v)
		}
		if v := os.Getenv("XABRIDGE_MYSQL"); v != "" {
			specs = append(specs, "mysql="+v)
		}
	}
	if len(specs) == 0 && o.resourcesOptional {
		return r, nil
	}
	if len(specs) == 0 {
		return nil, usagef("no resources: give --resource NAME=URL (or XABRIDGE_RESOURCES, --config, or XABRIDGE_PG/XABRIDGE_MYSQL)")
	}
	seen := map[string]bool{}
	for _, s := range specs {
		name, u, ok := strings.Cut(s, "=")
		if !ok || name == "" || u == "" {
			return nil, usagef("--resource %q: want NAME=URL", redact.URL(s))
		}
		if err := drivers.ValidateResourceName(name); err != nil {
			return nil, usagef("--resource: %v", err)
		}
		if seen[name] {
			return nil, usagef("--resource: %q given twice", name)
		}
		if err := checkURL("--resource "+name+":", u); err != nil {
			return nil, err
		}
		seen[name] = true
		r.resources = append(r.resources, namedURL{name, u})
	}
	r.keeper = first(o.keeper, os.Getenv("XABRIDGE_DECISION_RESOURCE"), fc.DecisionResource)
	if r.keeper != "" && !seen[r.keeper] {
		return nil, usagef("--decision-resource %q is not one of the resources (%s)", r.keeper, strings.Join(sortedNames(seen), ", "))
	}
	return r, nil
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// openResources opens every configured resource. MySQL resources connect
// (and fail) at open; PostgreSQL ones at first use, as scan errors.
func (r *resolved) openResources(ctx context.Context) ([]drivers.Resource, func(), error) {
	var res []drivers.Resource
	var closers []io.Closer
	closeAll := func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}
	for _, nu := range r.resources {
		rs, c, err := drivers.Open(ctx, nu.name, nu.url)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		res = append(res, rs)
		closers = append(closers, c)
	}
	return res, closeAll, nil
}

// openLog opens the decision log: for writing (taking its lock) when the
// command acts, read-only otherwise.
func (r *resolved) openLog(write bool) (*decisionlog.FileLog, error) {
	// Never create one: recovery on an empty log (a mistyped --log-dir)
	// would find no commit decisions and presume the node's committed
	// transactions aborted. Only a coordinator (xa.New) starts a log.
	if !decisionlog.LogExists(r.logDir) {
		return nil, fmt.Errorf("no decision log at %s (give the node's --log-dir; acting without its log would presume its committed transactions aborted)", r.logDir)
	}
	l, err := decisionlog.OpenFileLog(r.logDir, decisionlog.FileLogOptions{ReadOnly: !write, NoCreate: true, Node: r.nodeID})
	if err != nil {
		if errors.Is(err, decisionlog.ErrLogLocked) {
			return nil, fmt.Errorf("%w (a coordinator is running on this log: stop it first, or let its own recovery resolve its transactions)", err)
		}
		return nil, err
	}
	return l, nil
}

// actor names the operator for the log's action records.
func actor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return "operator " + name + "@" + host
}
