package tracing_test

import (
	"context"
	"testing"

	"github.com/xabridge/xabridge/tracing"
	"github.com/xabridge/xabridge/xa"
)

// A labelled transaction's span carries xabridge.label; an unlabelled
// one's has no such attribute.
func TestSpanLabel(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	err := e.coord.Run(ctx, func(ctx context.Context, tx *xa.Tx) error {
		if err := tx.SetLabel("order-77"); err != nil {
			return err
		}
		if _, err := tx.Enlist(ctx, e.a); err != nil {
			return err
		}
		_, err := tx.Enlist(ctx, e.b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.runBoth(ctx); err != nil {
		t.Fatal(err)
	}
	txs := find(e.rec.Ended(), tracing.SpanTransaction)
	if len(txs) != 2 {
		t.Fatalf("%d transaction spans", len(txs))
	}
	if got := attr(txs[0], tracing.AttrLabel).AsString(); got != "order-77" {
		t.Errorf("labelled span: label %q", got)
	}
	for _, kv := range txs[1].Attributes() {
		if kv.Key == tracing.AttrLabel {
			t.Errorf("unlabelled span has label %q", kv.Value.AsString())
		}
	}
}
