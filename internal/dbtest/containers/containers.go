// Package containers starts the test databases with testcontainers-go when
// a Docker engine is reachable: PostgreSQL with two-phase commit enabled,
// and MariaDB or MySQL 8. Importing it registers it with internal/dbtest,
// which uses it only when XABRIDGE_PG / XABRIDGE_MYSQL are unset and Docker
// answers. The containers are removed by testcontainers' reaper when the
// test binary exits.
package containers

import (
	"context"
	"fmt"
	"os"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/xabridge/xabridge/internal/dbtest"
)

func init() { dbtest.RegisterContainers(Start) }

// Images used unless XABRIDGE_TEST_PG_IMAGE / XABRIDGE_TEST_MYSQL_IMAGE
// name others (e.g. mysql:8.4).
const (
	DefaultPGImage    = "postgres:15"
	DefaultMySQLImage = "mariadb:10.11"
)

// spec is one container to start.
type spec struct {
	key, image, port string
	env              map[string]string
	cmd              []string
	ready            string // log line printed when the server accepts connections
	url              func(hostPort string) string
}

// specs returns the containers to start, from the environment.
func specs() []spec {
	pgImage, myImage := DefaultPGImage, DefaultMySQLImage
	if v := os.Getenv("XABRIDGE_TEST_PG_IMAGE"); v != "" {
		pgImage = v
	}
	if v := os.Getenv("XABRIDGE_TEST_MYSQL_IMAGE"); v != "" {
		myImage = v
	}
	return []spec{
		{
			key: "XABRIDGE_PG", image: pgImage, port: "5432/tcp",
			env: map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": "xabridge"},
			// Two-phase commit is off by default (max_prepared_transactions = 0).
			cmd:   []string{"postgres", "-c", "max_connections=300", "-c", "max_prepared_transactions=300"},
			ready: "database system is ready to accept connections",
			url:   func(hp string) string { return "postgres://postgres@" + hp + "/xabridge?sslmode=disable" },
		},
		{
			key: "XABRIDGE_MYSQL", image: myImage, port: "3306/tcp",
			env: map[string]string{
				"MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "1", "MARIADB_DATABASE": "xabridge",
				"MYSQL_ALLOW_EMPTY_PASSWORD": "1", "MYSQL_DATABASE": "xabridge",
			},
			cmd:   []string{"--max-connections=400"},
			ready: "ready for connections",
			url:   func(hp string) string { return "mysql://root@" + hp + "/xabridge" },
		},
	}
}

// Start starts both containers and returns their URLs by environment key.
func Start(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range specs() {
		c, err := testcontainers.Run(ctx, s.image,
			testcontainers.WithExposedPorts(s.port),
			testcontainers.WithEnv(s.env),
			testcontainers.WithCmd(s.cmd...),
			testcontainers.WithWaitStrategy(wait.ForAll(
				wait.ForListeningPort(s.port),
				// Both images start a temporary server for initialisation
				// first; the second "ready" is the real one.
				wait.ForLog(s.ready).WithOccurrence(2),
			)),
		)
		if err != nil {
			return nil, fmt.Errorf("starting %s: %w", s.image, err)
		}
		hp, err := c.PortEndpoint(ctx, s.port, "")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.image, err)
		}
		out[s.key] = s.url(hp)
	}
	return out, nil
}
