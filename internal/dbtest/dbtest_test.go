package dbtest

import (
	"context"
	"net"
	"path/filepath"
	"testing"
)

func TestChoose(t *testing.T) {
	for _, tc := range []struct {
		name           string
		env            string
		starter, dockr bool
		want           Source
	}{
		{"environment wins", "postgres://x", true, true, SourceEnv},
		{"environment wins without docker", "postgres://x", false, false, SourceEnv},
		{"containers when registered and docker answers", "", true, true, SourceContainers},
		{"local when docker is not reachable", "", true, false, SourceLocal},
		{"local when no starter is registered", "", false, true, SourceLocal},
		{"local otherwise", "", false, false, SourceLocal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Choose(tc.env, tc.starter, tc.dockr); got != tc.want {
				t.Fatalf("Choose = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDockerReachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"unix://" + sock, true},
		{"unix://" + sock + ".missing", false},
		{"tcp://" + tcp.Addr().String(), true},
		{"tcp://127.0.0.1:1", false},
		{"ssh://user@host", false},
		{"::not a url", false},
	} {
		t.Run(tc.host, func(t *testing.T) {
			t.Setenv("DOCKER_HOST", tc.host)
			if got := DockerReachable(); got != tc.want {
				t.Fatalf("DockerReachable() = %v with DOCKER_HOST=%s, want %v", got, tc.host, tc.want)
			}
		})
	}
}

func TestRegisterContainers(t *testing.T) {
	called := false
	RegisterContainers(func(context.Context) (map[string]string, error) { called = true; return nil, nil })
	defer RegisterContainers(nil)
	starterMu.Lock()
	s := starter
	starterMu.Unlock()
	if s == nil {
		t.Fatal("starter not registered")
	}
	_, _ = s(context.Background())
	if !called {
		t.Fatal("registered starter not the one called")
	}
}
