package integration

// The integration tests run on containers started by testcontainers-go when
// XABRIDGE_PG / XABRIDGE_MYSQL are unset and XABRIDGE_TEST_DB is
// "containers", or "auto" with a Docker engine answering (see
// internal/dbtest); the Docker fault tests start their own.
import (
	"context"
	"os"
	"testing"

	"github.com/xabridge/xabridge/internal/dbtest"
	"github.com/xabridge/xabridge/internal/dbtest/containers"
)

// TestDatabasesSource checks that the shared test databases come from where
// XABRIDGE_TEST_DB asked (containers in scripts/test's container leg) and
// says which, for the CI log.
func TestDatabasesSource(t *testing.T) {
	dbtest.PG(t)
	dbtest.MySQL(t)
	src := dbtest.Used()
	if os.Getenv("XABRIDGE_PG") != "" {
		src = dbtest.SourceEnv
	}
	if dbtest.Mode() == "containers" && src != dbtest.SourceContainers {
		t.Fatalf("XABRIDGE_TEST_DB=containers, but the databases came from %s", src)
	}
	if src == dbtest.SourceContainers {
		pg, my, err := containers.Images(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("databases from %s: %s, %s", src, pg, my)
		return
	}
	t.Logf("databases from %s", src)
}
