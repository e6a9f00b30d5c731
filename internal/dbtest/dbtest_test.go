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
		env, mode      string
		starter, dockr bool
		want           Source
		wantErr        bool
	}{
		{"environment wins", "postgres://x", "auto", true, true, SourceEnv, false},
		{"environment wins without docker", "postgres://x", "containers", false, false, SourceEnv, false},
		{"containers when registered and docker answers", "", "auto", true, true, SourceContainers, false},
		{"auto is the default", "", "", true, true, SourceContainers, false},
		{"local when docker is not reachable", "", "auto", true, false, SourceLocal, false},
		{"local when no starter is registered", "", "auto", false, true, SourceLocal, false},
		{"local otherwise", "", "auto", false, false, SourceLocal, false},
		{"local when asked, docker or not", "", "local", true, true, SourceLocal, false},
		{"containers when asked", "", "containers", true, true, SourceContainers, false},
		{"containers asked, no docker: error", "", "containers", true, false, SourceContainers, true},
		{"containers asked, no starter: error", "", "containers", false, true, SourceContainers, true},
		{"unknown mode: error", "", "cloud", true, true, SourceLocal, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Choose(tc.env, tc.mode, tc.starter, tc.dockr)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Fatalf("Choose = %s, %v; want %s, error %v", got, err, tc.want, tc.wantErr)
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
