// Command xabridge runs, inspects and repairs global transactions that span
// PostgreSQL and MySQL/MariaDB databases.
//
// Exit codes: 0 ok, 1 error, 2 usage error, 3 in-doubt branches remain.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/xabridge/xabridge/drivers"
	"github.com/xabridge/xabridge/internal/demo"
	"github.com/xabridge/xabridge/internal/redact"
	"github.com/xabridge/xabridge/internal/selfcheck"
)

// Exit codes scripts can rely on.
const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitInDoubt = 3
)

// usageError marks errors in how the command was called (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// errInDoubtRemain is returned when a command finishes but in-doubt branches
// of ours remain (exit code 3).
var errInDoubtRemain = errors.New("in-doubt branches remain")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the CLI with args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	// One line: a driver's message may span several (PostgreSQL's DETAIL).
	fmt.Fprintln(stderr, "xabridge: "+drivers.OneLine(scrubError(err, args)))
	var ue usageError
	switch {
	case errors.As(err, &ue) || isCobraUsageError(err):
		return exitUsage
	case errors.Is(err, drivers.ErrNodeInUse):
		// Two live coordinators with one --node-id: a configuration
		// mistake, refused before anything changed.
		return exitUsage
	case errors.Is(err, errInDoubtRemain) || errors.Is(err, selfcheck.ErrStranded) || errors.Is(err, demo.ErrInDoubt):
		return exitInDoubt
	default:
		return exitError
	}
}

// scrubError is an error's text without the password of any database URL
// the CLI was given (arguments, environment): a second line of defence
// behind the adapters, which never quote a password themselves.
func scrubError(err error, args []string) string {
	urls := append([]string{os.Getenv("XABRIDGE_PG"), os.Getenv("XABRIDGE_MYSQL"), os.Getenv("XABRIDGE_STORE")}, args...)
	urls = append(urls, strings.Split(os.Getenv("XABRIDGE_RESOURCES"), ",")...)
	return redact.Scrub(urls...)(err.Error())
}

// isCobraUsageError recognises the argument errors cobra makes itself.
func isCobraUsageError(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires at most", "flag needs an argument", "invalid argument"} {
		if strings.HasPrefix(s, p) || strings.Contains(s, " "+p) {
			return true
		}
	}
	return false
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "xabridge",
		Short: "Atomic transactions across PostgreSQL and MySQL/MariaDB (two-phase commit)",
		Long: `xabridge makes one logical transaction atomic across several SQL databases
with two-phase commit (X/Open XA), and gives operators the tools to see and
settle in-doubt branches a crash left behind.

Exit codes: 0 ok, 1 error, 2 usage error, 3 in-doubt branches remain.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: resolveEnvDefaults,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newListCmd(), newShowCmd(), newResolveCmd(), newRecoverCmd(), newLogCmd())
	root.AddCommand(newDemoCmd(), newVersionCmd())
	root.AddCommand(newSelfcheckCmd())
	root.AddCommand(newBenchCmd())
	root.AddCommand(newDoctorCmd())
	root.AddCommand(newNodesCmd())
	return root
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the xabridge version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "xabridge", version)
			return nil
		},
	}
}

// noArgs is cobra.NoArgs with a usage error.
// unknownSubcommand is the RunE of a command that only groups others: a
// word it does not know is a usage error (exit 2), none shows the help.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmd.Help()
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// envOr returns the environment variable key, or def when it is unset.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
