package integration

// The integration tests may run on testcontainers-go when Docker is
// reachable and XABRIDGE_PG / XABRIDGE_MYSQL are unset (see internal/dbtest).
import _ "github.com/xabridge/xabridge/internal/dbtest/containers"
