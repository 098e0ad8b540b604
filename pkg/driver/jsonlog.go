package driver

import (
	"context"
	"log/slog"
)

// uniqueKeys is a slog.Handler that writes each key of a log line once. A call's
// logger carries keys such as volumeID and requestID (pkg/server's interceptor), and
// an engine line logged under it may name volumeID again: klog's text format merges
// such duplicates (the line's own value wins), slog's JSON handler would write both.
// The handler keeps the logger's attributes itself and, for each line, passes them
// on without those the line sets again. A group (logr does not make any) ends the
// merging: what was kept goes to the inner handler first.
type uniqueKeys struct {
	inner slog.Handler
	attrs []slog.Attr // the logger's attributes, not yet given to inner
}

func (h uniqueKeys) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h uniqueKeys) WithAttrs(attrs []slog.Attr) slog.Handler {
	kept := make([]slog.Attr, 0, len(h.attrs)+len(attrs))
	for _, a := range h.attrs {
		if !hasKey(attrs, a.Key) {
			kept = append(kept, a)
		}
	}
	return uniqueKeys{inner: h.inner, attrs: append(kept, attrs...)}
}

func (h uniqueKeys) WithGroup(name string) slog.Handler {
	return uniqueKeys{inner: h.inner.WithAttrs(h.attrs).WithGroup(name)}
}

func (h uniqueKeys) Handle(ctx context.Context, r slog.Record) error {
	if len(h.attrs) == 0 {
		return h.inner.Handle(ctx, r)
	}
	own := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool { own = append(own, a); return true })
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	for _, a := range h.attrs {
		if !hasKey(own, a.Key) {
			out.AddAttrs(a)
		}
	}
	out.AddAttrs(own...)
	return h.inner.Handle(ctx, out)
}

func hasKey(attrs []slog.Attr, key string) bool {
	for _, a := range attrs {
		if a.Key == key {
			return true
		}
	}
	return false
}
