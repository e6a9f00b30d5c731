package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/xabridge/xabridge/internal/redact"
)

// envURL is a string flag whose default is an environment variable, read
// when the command runs (resolveEnvDefaults): --help shows the variable's
// name, never its value, which may be a URL with a password.
type envURL struct {
	p   *string
	env string
	set bool
}

func (e *envURL) String() string { return *e.p }
func (e *envURL) Type() string   { return "string" }
func (e *envURL) Set(v string) error {
	*e.p, e.set = v, true
	return nil
}

// envURLVar defines the flag name with the default $env.
func envURLVar(f *pflag.FlagSet, p *string, name, env, usage string) {
	f.Var(&envURL{p: p, env: env}, name, usage)
	f.Lookup(name).DefValue = "$" + env
}

// addURLFlags defines --pg and --mysql, defaulting to $XABRIDGE_PG and
// $XABRIDGE_MYSQL, for the commands that work on the demo's two databases.
func addURLFlags(cmd *cobra.Command, pg, my *string) {
	f := cmd.Flags()
	envURLVar(f, pg, "pg", "XABRIDGE_PG", "PostgreSQL URL, postgres://user:pass@host:port/db")
	envURLVar(f, my, "mysql", "XABRIDGE_MYSQL", "MySQL/MariaDB URL, mysql://user:pass@host:port/db")
}

// resolveEnvDefaults gives every envURL flag of cmd that was not set its
// environment variable's value, and checks it. The root command runs it
// before any command.
func resolveEnvDefaults(cmd *cobra.Command, _ []string) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if e, ok := f.Value.(*envURL); ok {
			if !e.set {
				*e.p = os.Getenv(e.env)
			}
			if err == nil {
				err = checkURL("--"+f.Name, *e.p)
			}
		}
	})
	return err
}

// checkURL refuses a database URL whose password a driver would misread
// (redact.Ambiguous): it would connect elsewhere, and its errors would
// show the rest of the password as a host or database name.
func checkURL(what, u string) error {
	if redact.Ambiguous(u) {
		return usagef("%s %s: percent-encode the password's @ : / # ? characters (@ is %%40, / is %%2F, # is %%23); as written, part of it would be read as the host or database", what, redact.URL(u))
	}
	return nil
}
