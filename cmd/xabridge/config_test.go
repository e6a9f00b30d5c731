package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Flags win over the environment, the environment over the config file,
// the file over the defaults; the decision resource must name a resource.
func TestOpsConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "xabridge.json")
	if err := os.WriteFile(file, []byte(`{"node_id": "file-node", "log_dir": "/file/log",
		"resources": {"ledger": "postgres://l@h/db", "wallet": "mysql://w@h/db"}, "decision_resource": "ledger"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"XABRIDGE_NODE_ID", "XABRIDGE_LOG_DIR", "XABRIDGE_RESOURCES", "XABRIDGE_DECISION_RESOURCE", "XABRIDGE_CONFIG", "XABRIDGE_PG", "XABRIDGE_MYSQL"} {
		t.Setenv(v, "")
	}
	tests := []struct {
		name string
		o    opsConfig
		env  map[string]string
		want resolved
		err  string
	}{
		{"file only", opsConfig{configFile: file}, nil, resolved{nodeID: "file-node", nodeIDGiven: true, logDir: "/file/log", output: "table", keeper: "ledger",
			resources: []namedURL{{"ledger", "postgres://l@h/db"}, {"wallet", "mysql://w@h/db"}}}, ""},
		{"env over file", opsConfig{configFile: file}, map[string]string{"XABRIDGE_NODE_ID": "env-node", "XABRIDGE_DECISION_RESOURCE": "wallet"},
			resolved{nodeID: "env-node", nodeIDGiven: true, logDir: "/file/log", output: "table", keeper: "wallet",
				resources: []namedURL{{"ledger", "postgres://l@h/db"}, {"wallet", "mysql://w@h/db"}}}, ""},
		{"flags over env", opsConfig{configFile: file, nodeID: "flag-node", keeper: "ledger", resources: []string{"ledger=postgres://x@h/db"}},
			map[string]string{"XABRIDGE_NODE_ID": "env-node", "XABRIDGE_DECISION_RESOURCE": "wallet"},
			resolved{nodeID: "flag-node", nodeIDGiven: true, logDir: "/file/log", output: "table", keeper: "ledger", resources: []namedURL{{"ledger", "postgres://x@h/db"}}}, ""},
		{"defaults", opsConfig{}, map[string]string{"XABRIDGE_PG": "postgres://p@h/db"},
			resolved{nodeID: "demo", logDir: ".xabridge/log", output: "table", resources: []namedURL{{"pg", "postgres://p@h/db"}}}, ""},
		{"decision resource not a resource", opsConfig{configFile: file, resources: []string{"wallet=mysql://w@h/db"}}, nil,
			resolved{}, `--decision-resource "ledger" is not one of the resources (wallet)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			got, err := tt.o.resolve()
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, *got, cmp.AllowUnexported(resolved{}, namedURL{})); diff != "" {
				t.Errorf("resolved (-want +got):\n%s", diff)
			}
		})
	}
}

// A config file is exactly one JSON object of known keys, each once; any
// other file is a usage error that names the problem, and reading ends even
// on an endless file.
func TestConfigFileRefused(t *testing.T) {
	for _, v := range []string{"XABRIDGE_NODE_ID", "XABRIDGE_LOG_DIR", "XABRIDGE_RESOURCES", "XABRIDGE_CONFIG"} {
		t.Setenv(v, "")
	}
	t.Setenv("XABRIDGE_PG", "postgres://p@h/db")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want string
	}{
		{"second document", write("two.json", `{"node_id": "a"} {"node_id": "b"}`), "more than one JSON value"},
		{"trailing garbage", write("garbage.json", `{"node_id": "a"} x`), "more than one JSON value"},
		{"duplicate key", write("dup.json", `{"node_id": "a", "node_id": "b"}`), `key "node_id" given twice`},
		{"duplicate resource", write("dupres.json", `{"resources": {"pg": "postgres://a@h/db", "pg": "postgres://b@h/db"}}`), `key "pg" given twice`},
		{"unknown key", write("unknown.json", `{"node": "a"}`), `unknown field "node"`},
		{"not JSON", write("yaml.json", "node_id: a\n"), "invalid character"},
		{"endless", "/dev/zero", "larger than"},
		{"missing", filepath.Join(dir, "nope.json"), "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := (&opsConfig{configFile: tt.path}).resolve()
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want a usage error containing %q", err, tt.want)
			}
		})
	}
	// Nested objects and arrays of distinct keys are fine.
	p := write("ok.json", `{"node_id": "a", "resources": {"pg": "postgres://a@h/db", "my": "mysql://b@h/db"}, "log_dir": "/l"}`)
	if _, err := (&opsConfig{configFile: p}).resolve(); err != nil {
		t.Fatalf("a valid config file: %v", err)
	}
	// An explicitly empty --log-dir never means the default log.
	if _, err := (&opsConfig{logDirSet: true}).resolve(); err == nil || !strings.Contains(err.Error(), "--log-dir is empty") {
		t.Fatalf("empty --log-dir: %v", err)
	}
}
