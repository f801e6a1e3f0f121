package etcdserver

import (
	"bytes"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
)

func TestZapToSlog(t *testing.T) {
	var buf bytes.Buffer
	closing := new(atomic.Bool)
	zl := newZapLogger(slog.New(slog.NewTextHandler(&buf, nil)), closing).With(zap.String("member", "weft"))

	zl.Info("chatty")
	zl.Error("disk on fire", zap.Int("errno", 5))
	zl.Error("failed to update storage version", zap.String("why", "fresh cluster"))
	out := buf.String()
	if strings.Contains(out, "chatty") || strings.Contains(out, "storage version") {
		t.Fatalf("info or benign records forwarded:\n%s", out)
	}
	for _, want := range []string{"level=ERROR", `msg="disk on fire"`, "component=etcd", "errno=5", "member=weft"} {
		if !strings.Contains(out, want) {
			t.Fatalf("missing %q in:\n%s", want, out)
		}
	}
	buf.Reset()
	closing.Store(true)
	zl.Error("accept: use of closed network connection")
	if buf.Len() != 0 {
		t.Fatalf("errors during Close forwarded at error level:\n%s", buf.String())
	}
}
