// Package containers starts the test databases with testcontainers-go when
// a Docker engine is reachable: PostgreSQL 15 with two-phase commit enabled,
// and MariaDB 10.11 (or MySQL 8). Importing it registers it with
// internal/dbtest, which uses it when XABRIDGE_PG / XABRIDGE_MYSQL are unset
// and Docker answers (or XABRIDGE_TEST_DB=containers demands it).
//
// The images are the project's own, built from Debian packages by
// scripts/images (xabridge-local/postgres:15, xabridge-local/mariadb:10.11),
// when the engine has them, else the public ones (see Images). Testcontainers'
// reaper (Ryuk) is disabled unless TESTCONTAINERS_RYUK_DISABLED says
// otherwise: its image cannot be pulled without a registry. Containers are
// removed by TerminateAll (call it from TestMain), on SIGINT/SIGTERM, and,
// when a test binary died without either, by ReapStale at the next start
// (or `scripts/images clean`): every container and network carries the
// labels org.xabridge.test, org.xabridge.test.pid and org.xabridge.test.host.
//
// Beside the databases of a Set, StartApp runs containers of the project's
// own image on the set's network, each at its own address: the coordinator
// image (CoordinatorImage: the xabridge CLI of the checkout, static, FROM
// scratch), for the HA tests on separate network hosts.
package containers

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"

	"github.com/xabridge/xabridge/internal/dbtest"
)

func init() { dbtest.RegisterContainers(Start) }

// The images: the project's own, built by scripts/images from Debian
// packages, and the public ones for machines with a registry.
const (
	LocalPGImage     = "xabridge-local/postgres:15"
	LocalMySQLImage  = "xabridge-local/mariadb:10.11"
	PublicPGImage    = "postgres:15"
	PublicMySQLImage = "mariadb:10.11"
)

// Labels every test container and network carries.
const (
	LabelTest = "org.xabridge.test"
	LabelPID  = "org.xabridge.test.pid"
	LabelHost = "org.xabridge.test.host"
)

// Images returns the PostgreSQL and MySQL/MariaDB images to run:
// XABRIDGE_TEST_PG_IMAGE / XABRIDGE_TEST_MYSQL_IMAGE when set, else as
// XABRIDGE_TEST_IMAGES says: "local" (the xabridge-local images), "public"
// (postgres:15, mariadb:10.11, pulled if missing), or "auto", the default:
// each local image when the engine has it, the public one otherwise.
func Images(ctx context.Context) (pg, my string, err error) {
	mode := os.Getenv("XABRIDGE_TEST_IMAGES")
	pick := func(override, local, public string) (string, error) {
		if override != "" {
			return override, nil
		}
		switch mode {
		case "local":
			return local, nil
		case "public":
			return public, nil
		case "", "auto":
			if _, err := docker(ctx, "image", "inspect", "--format", "{{.Id}}", local); err == nil {
				return local, nil
			}
			return public, nil
		}
		return "", fmt.Errorf("containers: XABRIDGE_TEST_IMAGES=%q: want local, public or auto", mode)
	}
	if pg, err = pick(os.Getenv("XABRIDGE_TEST_PG_IMAGE"), LocalPGImage, PublicPGImage); err != nil {
		return "", "", err
	}
	my, err = pick(os.Getenv("XABRIDGE_TEST_MYSQL_IMAGE"), LocalMySQLImage, PublicMySQLImage)
	return pg, my, err
}

// spec is one container to start. The environment and arguments are
// understood alike by the local and the public images.
type spec struct {
	key, image, port string
	env              map[string]string
	cmd              []string
	url              func(hostPort string) string
}

// specs returns the containers to start with the given images.
func specs(pgImage, myImage string) []spec {
	return []spec{
		{
			key: "XABRIDGE_PG", image: pgImage, port: "5432",
			env: map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": "xabridge"},
			// Two-phase commit is off by default (max_prepared_transactions = 0).
			cmd: []string{"postgres", "-c", "max_connections=300", "-c", "max_prepared_transactions=300"},
			url: func(hp string) string { return "postgres://postgres@" + hp + "/xabridge?sslmode=disable" },
		},
		{
			key: "XABRIDGE_MYSQL", image: myImage, port: "3306",
			env: map[string]string{
				"MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "1", "MARIADB_DATABASE": "xabridge",
				"MYSQL_ALLOW_EMPTY_PASSWORD": "1", "MYSQL_DATABASE": "xabridge",
			},
			cmd: []string{"--max-connections=400"},
			url: func(hp string) string { return "mysql://root@" + hp + "/xabridge" },
		},
	}
}

// DB is one started database container.
type DB struct {
	// Key is the environment variable its URL is for: XABRIDGE_PG or
	// XABRIDGE_MYSQL.
	Key   string
	Image string
	// ID is the container's id.
	ID string
	// URL reaches the server from this host; Addr is its host:port.
	URL, Addr string

	c       *testcontainers.DockerContainer
	network string // the private network of a Set; "" for Start's
	ip      string // its address on that network
}

var (
	mu       sync.Mutex
	live     = map[string]*testcontainers.DockerContainer{} // by container id
	networks = map[string]bool{}                            // private networks by name
	sigOnce  sync.Once
	closing  bool // a signal arrived: containers still starting are removed at once
	hostname = func() string { h, _ := os.Hostname(); return h }()
)

// Start starts a PostgreSQL and a MariaDB container with their ports
// published on 127.0.0.1 and returns their URLs by environment key.
func Start(ctx context.Context) (map[string]string, error) {
	pg, my, err := Images(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, s := range specs(pg, my) {
		db, err := run(ctx, s, "", "")
		if err != nil {
			return nil, err
		}
		out[s.key] = db.URL
	}
	return out, nil
}

// Set is a PostgreSQL and a MariaDB container alone on a private Docker
// network created for them, reached at their fixed addresses on it (no
// published ports), for tests that break them: docker kill, pause, network
// disconnect.
type Set struct {
	Network string
	PG, My  *DB

	prefix netip.Prefix // the network's /24: .2 is PG, .3 is My, apps from .10
	mu     sync.Mutex
	apps   []*App // started on it (StartApp), removed before the network
}

// StartSet creates a private network and starts a PostgreSQL and a MariaDB
// container on it.
func StartSet(ctx context.Context) (*Set, error) {
	pg, my, err := Images(ctx)
	if err != nil {
		return nil, err
	}
	name, prefix, err := createNetwork(ctx)
	if err != nil {
		return nil, err
	}
	set := &Set{Network: name, prefix: prefix}
	ss := specs(pg, my)
	if set.PG, err = run(ctx, ss[0], name, prefix.Addr().Next().Next().String()); err != nil {
		return nil, errors.Join(err, set.Terminate(context.WithoutCancel(ctx)))
	}
	if set.My, err = run(ctx, ss[1], name, prefix.Addr().Next().Next().Next().String()); err != nil {
		return nil, errors.Join(err, set.Terminate(context.WithoutCancel(ctx)))
	}
	return set, nil
}

// Terminate removes the set's containers and its network.
func (s *Set) Terminate(ctx context.Context) error {
	var errs []error
	s.mu.Lock()
	apps := s.apps
	s.apps = nil
	s.mu.Unlock()
	for _, a := range apps {
		errs = append(errs, a.Terminate(ctx))
	}
	for _, db := range []*DB{s.PG, s.My} {
		if db != nil {
			errs = append(errs, db.Terminate(ctx))
		}
	}
	errs = append(errs, removeNetwork(ctx, s.Network))
	return errors.Join(errs...)
}

func labels() map[string]string {
	return map[string]string{LabelTest: "1", LabelPID: strconv.Itoa(os.Getpid()), LabelHost: hostname}
}

// run starts one container and waits until its server answers SQL. Its
// port is published on 127.0.0.1; with a network, the container is attached
// only to it, at ip, and reached there.
func run(ctx context.Context, s spec, netName, ip string) (*DB, error) {
	if err := prepare(ctx); err != nil {
		return nil, err
	}
	port := network.MustParsePort(s.port + "/tcp")
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithEnv(s.env),
		testcontainers.WithCmd(s.cmd...),
		testcontainers.WithLabels(labels()),
	}
	// The port is published on loopback only (testcontainers would
	// publish the image's ports on every interface otherwise).
	opts = append(opts,
		testcontainers.WithExposedPorts(s.port+"/tcp"),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{port: {{HostIP: netip.MustParseAddr("127.0.0.1")}}}
		}))
	if netName != "" {
		opts = append(opts, onNetwork(netName, ip)...)
	}
	c, err := runContainer(ctx, s.image, opts)
	if err != nil {
		return nil, err
	}
	db := &DB{Key: s.key, Image: s.image, ID: c.GetContainerID(), c: c, network: netName, ip: ip}
	if netName == "" {
		mp, err := c.MappedPort(ctx, s.port+"/tcp")
		if err != nil {
			return nil, errors.Join(fmt.Errorf("containers: %s: %w", s.image, err), terminate(context.WithoutCancel(ctx), db.ID))
		}
		db.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(mp.Num())))
	} else {
		db.Addr = net.JoinHostPort(ip, s.port)
	}
	db.URL = s.url(db.Addr)
	if err := db.WaitReady(ctx); err != nil {
		return nil, errors.Join(err, terminate(context.WithoutCancel(ctx), db.ID))
	}
	return db, nil
}

// prepare is what comes before starting any container: no reaper, the
// leftovers of dead test processes removed, signals handled.
func prepare(ctx context.Context) error {
	if os.Getenv("TESTCONTAINERS_RYUK_DISABLED") == "" {
		// The reaper's image cannot be pulled without a registry; we
		// remove our containers ourselves.
		_ = os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	}
	if _, err := ReapStale(ctx); err != nil {
		return err
	}
	handleSignals()
	return nil
}

// onNetwork attaches a container only to netName, at ip.
func onNetwork(netName, ip string) []testcontainers.ContainerCustomizer {
	addr := netip.MustParseAddr(ip)
	return []testcontainers.ContainerCustomizer{
		testcontainers.CustomizeRequestOption(func(req *testcontainers.GenericContainerRequest) error {
			req.Networks = []string{netName}
			return nil
		}),
		testcontainers.WithEndpointSettingsModifier(func(m map[string]*network.EndpointSettings) {
			es := m[netName]
			if es == nil {
				es = &network.EndpointSettings{}
				m[netName] = es
			}
			es.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: addr}
		}),
	}
}

// runContainer starts a container and registers it for TerminateAll
// (removing it at once when that fails or a signal came meanwhile).
func runContainer(ctx context.Context, image string, opts []testcontainers.ContainerCustomizer) (*testcontainers.DockerContainer, error) {
	c, err := testcontainers.Run(ctx, image, opts...)
	if c != nil {
		mu.Lock()
		live[c.GetContainerID()] = c
		stopping := closing
		mu.Unlock()
		if stopping && err == nil {
			err = errors.New("interrupted")
		}
	}
	if err != nil {
		if c != nil {
			err = errors.Join(err, terminate(context.WithoutCancel(ctx), c.GetContainerID()))
		}
		if _, ierr := docker(context.WithoutCancel(ctx), "image", "inspect", "--format", "{{.Id}}", image); ierr != nil {
			err = fmt.Errorf("%w (the image is not in the engine and was not pulled; without a registry, scripts/images builds the xabridge-local ones)", err)
		}
		return nil, fmt.Errorf("containers: starting %s: %w", image, err)
	}
	return c, nil
}

// WaitReady polls until the server accepts a connection to its database
// and answers a query, or the container stops running (its log is then in
// the error), or ctx ends.
func (d *DB) WaitReady(ctx context.Context) error {
	var last error
	for {
		if last = d.ping(ctx); last == nil {
			return nil
		}
		st, err := d.c.State(ctx)
		if err == nil && !st.Running && !st.Paused {
			return fmt.Errorf("containers: %s stopped (%s, exit code %d) before it was ready: %w\n%s", d.Image, st.Status, st.ExitCode, last, d.logs(ctx))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containers: %s not ready: %w (last error: %v)\n%s", d.Image, ctx.Err(), last, d.logs(context.WithoutCancel(ctx)))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *DB) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if d.Key == "XABRIDGE_PG" {
		conn, err := pgx.Connect(ctx, d.URL)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		var one int
		return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	}
	cfg := mysqldriver.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "root", "tcp", d.Addr, "xabridge"
	cfg.Timeout = 3 * time.Second
	conn, err := mysqldriver.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	var one int
	return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

func (d *DB) logs(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rc, err := d.c.Logs(ctx)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(io.LimitReader(rc, 64<<10))
	return string(b)
}

// Kill is `docker kill`: SIGKILL to the server, the container's PID 1. The
// container stops with its data; Start brings it back.
func (d *DB) Kill(ctx context.Context) error {
	_, err := docker(ctx, "kill", d.ID)
	return err
}

// Start is `docker start` of a stopped (killed) container on its data, then
// WaitReady: the database's crash recovery happens here.
func (d *DB) Start(ctx context.Context) error {
	if _, err := docker(ctx, "start", d.ID); err != nil {
		return err
	}
	return d.WaitReady(ctx)
}

// Pause is `docker pause`: every process of the container is frozen; its
// connections stay open and unanswered.
func (d *DB) Pause(ctx context.Context) error {
	_, err := docker(ctx, "pause", d.ID)
	return err
}

// Unpause is `docker unpause`.
func (d *DB) Unpause(ctx context.Context) error {
	_, err := docker(ctx, "unpause", d.ID)
	return err
}

// Disconnect is `docker network disconnect` from the set's private network:
// a partition between this host and the server (the server keeps running;
// packets to its address go nowhere).
func (d *DB) Disconnect(ctx context.Context) error { return disconnect(ctx, d.network, d.ID) }

func disconnect(ctx context.Context, netName, id string) error {
	if netName == "" {
		return fmt.Errorf("containers: %s is not on a private network", id)
	}
	_, err := docker(ctx, "network", "disconnect", netName, id)
	return err
}

// Connect is `docker network connect` back to the private network, at the
// same address.
func (d *DB) Connect(ctx context.Context) error { return connect(ctx, d.network, d.ip, d.ID) }

func connect(ctx context.Context, netName, ip, id string) error {
	if netName == "" {
		return fmt.Errorf("containers: %s is not on a private network", id)
	}
	_, err := docker(ctx, "network", "connect", "--ip", ip, netName, id)
	return err
}

// Terminate removes the container.
func (d *DB) Terminate(ctx context.Context) error { return terminate(ctx, d.ID) }

func terminate(ctx context.Context, id string) error {
	mu.Lock()
	c := live[id]
	delete(live, id)
	mu.Unlock()
	if c == nil {
		return nil
	}
	// A paused container cannot be stopped; unpause it first (an error
	// means it was not paused).
	_, _ = docker(ctx, "unpause", id)
	if err := c.Terminate(ctx, testcontainers.StopTimeout(10*time.Second)); err != nil {
		return fmt.Errorf("containers: removing %s: %w", id, err)
	}
	return nil
}

// TerminateAll removes every container and network this process started
// (call it from TestMain after m.Run).
func TerminateAll(ctx context.Context) error {
	mu.Lock()
	ids := make([]string, 0, len(live))
	for id := range live {
		ids = append(ids, id)
	}
	nets := make([]string, 0, len(networks))
	for n := range networks {
		nets = append(nets, n)
	}
	mu.Unlock()
	var errs []error
	for _, id := range ids {
		errs = append(errs, terminate(ctx, id))
	}
	for _, n := range nets {
		errs = append(errs, removeNetwork(ctx, n))
	}
	return errors.Join(errs...)
}

// handleSignals removes this process's containers on SIGINT or SIGTERM,
// then dies of the signal as it would have.
func handleSignals() {
	sigOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			sig := <-ch
			mu.Lock()
			closing = true
			mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			// Twice: a container whose start was under way the first time
			// is there the second.
			_ = TerminateAll(ctx)
			if err := TerminateAll(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "containers:", err)
			}
			cancel()
			signal.Reset(sig)
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		}()
	})
}

// ReapStale removes test containers and networks of this host whose owning
// process is gone (a test binary killed by -timeout, say). Those of live
// processes are left alone. It returns how many it removed.
func ReapStale(ctx context.Context) (int, error) {
	n := 0
	var errs []error
	out, err := docker(ctx, "ps", "-a", "--filter", "label="+LabelTest, "--filter", "label="+LabelHost+"="+hostname,
		"--format", `{{.ID}} {{.Label "`+LabelPID+`"}}`)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if id, pid, ok := strings.Cut(line, " "); ok && stale(pid) {
			if _, err := docker(ctx, "rm", "-f", "-v", id); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	out, err = docker(ctx, "network", "ls", "--filter", "label="+LabelTest, "--filter", "label="+LabelHost+"="+hostname,
		"--format", `{{.Name}} {{.Label "`+LabelPID+`"}}`)
	if err != nil {
		return n, errors.Join(append(errs, err)...)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if name, pid, ok := strings.Cut(line, " "); ok && stale(pid) {
			if _, err := docker(ctx, "network", "rm", name); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

// stale reports whether pid names no running process.
func stale(pid string) bool {
	p, err := strconv.Atoi(pid)
	if err != nil || p <= 0 {
		return false
	}
	if p == os.Getpid() {
		return false
	}
	_, err = os.Stat("/proc/" + pid)
	return err != nil
}

// createNetwork creates a bridge network with a /24 of its own, so that a
// container can be reconnected at the same address, and returns its name
// and prefix.
func createNetwork(ctx context.Context) (string, netip.Prefix, error) {
	name := fmt.Sprintf("xab-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	routes := hostRoutes()
	var errs []error
	// 10.213.0.0/16 .. 10.220.0.0/16, one /24 at a time, starting at a
	// place of our own so that concurrent test binaries rarely collide.
	start := (os.Getpid()*7 + int(time.Now().UnixNano()%251)) % 2048
	for i := 0; i < 64; i++ {
		k := (start + i) % 2048
		prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(213 + k/256), byte(k % 256), 0}), 24)
		if overlaps(prefix, routes) {
			continue
		}
		args := []string{"network", "create", "--driver", "bridge", "--subnet", prefix.String()}
		for k, v := range labels() {
			args = append(args, "--label", k+"="+v)
		}
		if _, err := docker(ctx, append(args, name)...); err != nil {
			errs = append(errs, err)
			if strings.Contains(err.Error(), "overlap") {
				continue
			}
			return "", netip.Prefix{}, err
		}
		mu.Lock()
		networks[name] = true
		mu.Unlock()
		return name, prefix, nil
	}
	return "", netip.Prefix{}, fmt.Errorf("containers: no free /24 for a test network: %w", errors.Join(errs...))
}

func removeNetwork(ctx context.Context, name string) error {
	mu.Lock()
	ours := networks[name]
	mu.Unlock()
	if !ours {
		return nil
	}
	if _, err := docker(ctx, "network", "rm", name); err != nil {
		return err
	}
	mu.Lock()
	delete(networks, name)
	mu.Unlock()
	return nil
}

// hostRoutes returns the IPv4 destinations of this host's routing table.
func hostRoutes() []netip.Prefix {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		mask, err2 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil || dst == 0 {
			continue
		}
		// Little-endian words.
		a := netip.AddrFrom4([4]byte{byte(dst), byte(dst >> 8), byte(dst >> 16), byte(dst >> 24)})
		ones := 0
		for m := mask; m != 0; m >>= 1 {
			ones += int(m & 1)
		}
		out = append(out, netip.PrefixFrom(a, ones))
	}
	return out
}

func overlaps(p netip.Prefix, routes []netip.Prefix) bool {
	for _, r := range routes {
		if r.Overlaps(p) {
			return true
		}
	}
	return false
}

// docker runs the docker CLI and returns its standard output.
func docker(ctx context.Context, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
