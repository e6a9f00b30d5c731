package main

import (
	"strings"
	"testing"
	"time"
)

// The row of the operator commands' own node (xabridge-cli), which recover
// and resolve --store create to claim other nodes under, is left out of
// xabridge nodes once no such command runs, in the table and in JSON
// alike (counted in hidden_nodes); --all shows it, with role operator.
func TestNodesHidesTheOperatorRow(t *testing.T) {
	s := newStoreScene(t)
	s.open(t, "nr-live", 5*time.Second)
	// A recover --store with nothing to take over still creates, and
	// releases, the operator's lease.
	if out, errOut, code := cli(t, append(append([]string{"recover"}, s.flags()...), s.resources()...)...); code != exitOK {
		t.Fatalf("recover --store: exit %d\n%s%s", code, out, errOut)
	}
	if ni := s.node(t, operatorNode); !ni.Released {
		t.Fatalf("the operator's lease after recover: %+v, want released", ni)
	}

	j, code, errOut := nodesOut(t, s.flags()...)
	if code != exitOK {
		t.Fatalf("nodes: exit %d: %s", code, errOut)
	}
	m := byNode(j)
	if _, ok := m[operatorNode]; ok || j.Hidden != 1 {
		t.Fatalf("nodes -o json: rows %v, hidden %d; want the operator row left out and counted", m, j.Hidden)
	}
	if n, ok := m["nr-live"]; !ok || n.Role != roleCoordinator || n.Released {
		t.Fatalf("nodes -o json: the live coordinator's row %+v (present %v)", n, ok)
	}
	out, errOut, code := cli(t, append([]string{"nodes"}, s.flags()...)...)
	if code != exitOK || strings.Contains(out, operatorNode+" ") || !strings.Contains(out, "nr-live") || !strings.Contains(out, "--all shows them") {
		t.Fatalf("nodes (table): exit %d, want nr-live shown, the operator row left out with a note\n%s%s", code, out, errOut)
	}

	j, code, errOut = nodesOut(t, append(s.flags(), "--all")...)
	if code != exitOK {
		t.Fatalf("nodes --all: exit %d: %s", code, errOut)
	}
	op, ok := byNode(j)[operatorNode]
	if !ok || op.Role != roleOperator || op.State != "expired" || !op.Released || j.Hidden != 0 {
		t.Fatalf("nodes --all -o json: operator row %+v (present %v), hidden %d", op, ok, j.Hidden)
	}
	out, errOut, code = cli(t, append([]string{"nodes", "--all"}, s.flags()...)...)
	if code != exitOK || !strings.Contains(out, operatorNode) || !strings.Contains(out, "operator") || !strings.Contains(out, "expired (released)") {
		t.Fatalf("nodes --all (table): exit %d\n%s%s", code, out, errOut)
	}
}
