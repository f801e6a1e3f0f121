package etcdserver

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// slogCore forwards etcd's zap records at error level and above to a slog
// logger. Records that etcd logs as errors during a normal start or Close
// are demoted to debug, so a healthy server logs nothing.
type slogCore struct {
	logger  *slog.Logger
	fields  []zapcore.Field
	closing *atomic.Bool
}

func newZapLogger(l *slog.Logger, closing *atomic.Bool) *zap.Logger {
	return zap.New(&slogCore{logger: l.With("component", "etcd"), closing: closing})
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.ErrorLevel }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{logger: c.logger, fields: append(append([]zapcore.Field(nil), c.fields...), fs...), closing: c.closing}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// benign are messages etcd logs at error level that are expected: a fresh
// single-node cluster has no storage version yet, and Close stops the
// listeners under the serving goroutines.
var benign = []string{
	"failed to update storage version",
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	level := slog.LevelError
	if c.closing.Load() {
		level = slog.LevelDebug
	}
	for _, b := range benign {
		if strings.Contains(e.Message, b) {
			level = slog.LevelDebug
		}
	}
	c.logger.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
