package containers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
)

// The coordinator image: the xabridge CLI built from this checkout, a
// static binary on an empty base (docker/xabridge/Dockerfile), so that
// nothing is pulled.
const (
	CoordinatorRepo = "xabridge-local/xabridge"
	// LabelInputs is the hash of an image's inputs (scripts/images uses
	// the same label); LabelCoordinator marks the coordinator images, so
	// that old ones can be pruned without touching any other image.
	LabelInputs      = "org.xabridge.inputs"
	LabelCoordinator = "org.xabridge.coordinator"
)

// CoordinatorImage builds the xabridge CLI of the module at root
// (CGO_ENABLED=0, -trimpath: the same source and toolchain give the same
// bytes) and returns the tag of the image holding it,
// xabridge-local/xabridge:<16 hex digits of the hash of the binary and the
// Dockerfile>. The image is built only when the engine does not have that
// tag with that hash (built says which); coordinator images older than a
// day that no container uses are then removed. The go build is
// incremental; the docker build takes a second or two.
func CoordinatorImage(ctx context.Context, root string) (tag string, built bool, err error) {
	tmp, err := os.MkdirTemp("", "xab-coordimage-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "xabridge")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/xabridge")
	build.Dir = root
	// A static Linux binary for the engine's architecture (this host's),
	// whatever GOFLAGS (-race needs cgo) the caller has.
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		return "", false, fmt.Errorf("containers: building the xabridge binary: %w\n%s", err, out)
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "docker", "xabridge", "Dockerfile"))
	if err != nil {
		return "", false, err
	}
	h := sha256.New()
	f, err := os.Open(bin)
	if err != nil {
		return "", false, err
	}
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return "", false, err
	}
	h.Write(dockerfile)
	hash := hex.EncodeToString(h.Sum(nil))[:16]
	tag = CoordinatorRepo + ":" + hash
	if got, err := docker(ctx, "image", "inspect", "--format", `{{ index .Config.Labels "`+LabelInputs+`" }}`, tag); err == nil && strings.TrimSpace(got) == hash {
		return tag, false, nil
	}
	if err := os.WriteFile(filepath.Join(tmp, "Dockerfile"), dockerfile, 0o644); err != nil {
		return "", false, err
	}
	if _, err := docker(ctx, "build", "--quiet", "--label", LabelInputs+"="+hash, "--label", LabelCoordinator+"=1",
		"--label", "org.opencontainers.image.title=xabridge coordinator (xabridge-local, built from a checkout; not a published image)",
		"-t", tag, tmp); err != nil {
		return "", false, fmt.Errorf("containers: building the coordinator image: %w", err)
	}
	// Images of earlier sources pile up as the code changes; a day's worth
	// is kept (another checkout's test may be using one right now), and
	// prune never removes an image a container uses.
	_, _ = docker(ctx, "image", "prune", "--force", "--all", "--filter", "label="+LabelCoordinator+"=1", "--filter", "until=24h")
	return tag, true, nil
}

// AppSpec is a container of the project's own image to start on a Set's
// network.
type AppSpec struct {
	// Name is the container's host name (a coordinator shows it as its
	// lease holder's host).
	Name  string
	Image string
	// Cmd are the arguments to the image's entrypoint.
	Cmd []string
	Env map[string]string
}

// App is a started application container on a Set's network, at an
// address of its own.
type App struct {
	ID, Name string
	// IP is its address on the set's network.
	IP string

	c       *testcontainers.DockerContainer
	network string
}

// StartApp starts an application container attached only to the set's
// network, at the next free address from .10 up. It does not wait for the
// application: the caller polls for what it needs (Logs, Exec). Terminate
// (or the set's) removes it.
func (s *Set) StartApp(ctx context.Context, spec AppSpec) (*App, error) {
	if err := prepare(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	b := s.prefix.Addr().As4()
	b[3] = byte(10 + len(s.apps))
	s.apps = append(s.apps, nil) // the address is taken
	i := len(s.apps) - 1
	s.mu.Unlock()
	ip := netip.AddrFrom4(b).String()
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithEnv(spec.Env),
		testcontainers.WithCmd(spec.Cmd...),
		testcontainers.WithLabels(labels()),
		testcontainers.WithConfigModifier(func(c *container.Config) { c.Hostname = spec.Name }),
	}
	opts = append(opts, onNetwork(s.Network, ip)...)
	c, err := runContainer(ctx, spec.Image, opts)
	if err != nil {
		return nil, err
	}
	a := &App{ID: c.GetContainerID(), Name: spec.Name, IP: ip, c: c, network: s.Network}
	s.mu.Lock()
	s.apps[i] = a
	s.mu.Unlock()
	return a, nil
}

// Kill is `docker kill`: SIGKILL to the application, the container's
// PID 1. The container stops; Start runs it again.
func (a *App) Kill(ctx context.Context) error {
	_, err := docker(ctx, "kill", a.ID)
	return err
}

// Start is `docker start` of a stopped container: its command runs again,
// at the same address.
func (a *App) Start(ctx context.Context) error {
	_, err := docker(ctx, "start", a.ID)
	return err
}

// Stop is `docker stop`: SIGTERM, then SIGKILL after timeout.
func (a *App) Stop(ctx context.Context, timeout time.Duration) error {
	_, err := docker(ctx, "stop", "--time", strconv.Itoa(int(timeout.Seconds())), a.ID)
	return err
}

// Wait waits until the container stops and returns its exit code.
func (a *App) Wait(ctx context.Context) (int, error) {
	out, err := docker(ctx, "wait", a.ID)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// Running reports whether the container runs.
func (a *App) Running(ctx context.Context) (bool, error) {
	out, err := docker(ctx, "inspect", "--format", "{{.State.Running}}", a.ID)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(out) == "true", nil
}

// Disconnect is `docker network disconnect` from the set's network: the
// application runs on, cut off from every other container (its packets go
// nowhere; the peers' connections to it are not closed).
func (a *App) Disconnect(ctx context.Context) error { return disconnect(ctx, a.network, a.ID) }

// Connect is `docker network connect` back to the set's network, at the
// same address (so that connections that survived the cut resume).
func (a *App) Connect(ctx context.Context) error { return connect(ctx, a.network, a.IP, a.ID) }

// Exec runs a command in the running container (`docker exec`; the image's
// entrypoint is not applied) and returns its output and exit code. err is
// set only when docker could not be run or ctx ended.
func (a *App) Exec(ctx context.Context, cmd ...string) (stdout, stderr string, code int, err error) {
	var out, errb bytes.Buffer
	c := exec.CommandContext(ctx, "docker", append([]string{"exec", a.ID}, cmd...)...)
	c.Stdout, c.Stderr = &out, &errb
	err = c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return out.String(), errb.String(), -1, fmt.Errorf("docker exec %s: %w", a.ID, err)
	}
	return out.String(), errb.String(), 0, nil
}

// Logs returns the container's output so far (stdout and stderr, each in
// order; docker does not keep their interleaving).
func (a *App) Logs(ctx context.Context) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	c := exec.CommandContext(ctx, "docker", "logs", a.ID)
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		return "", "", fmt.Errorf("docker logs %s: %w: %s", a.ID, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), nil
}

// Terminate removes the container.
func (a *App) Terminate(ctx context.Context) error {
	if a == nil {
		return nil
	}
	return terminate(ctx, a.ID)
}
