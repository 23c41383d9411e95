// Package logging writes the log lines of the plugin Controller: one
// logrus entry per line, with the task's fields, through the logger the
// Controller was given (WithLogger) or the one each call's context
// carries. The Controller (its log method) is the only caller. Safe for
// concurrent use.
package logging

import (
	"context"

	"github.com/containerd/log"
	swarmlog "github.com/moby/swarmkit/v2/log"
)

// Logf writes one log line with the task's fields and kv pairs: the
// Controller's log method, as the internal packages that log for it
// take it.
type Logf func(ctx context.Context, level log.Level, msg string, kv ...string)

// Task names what a line is about; see Line.
type Task struct {
	ID       string // the task's ID, as field "task"
	Service  string // its service's ID, as field "service"
	Plugin   string // the plugin's name, as field "plugin"
	PluginID string // the plugin's ID once known, as field "plugin.id"; omitted when ""
}

// Line writes msg at level through l, or, when l is nil, the logger ctx
// carries (FromContext), with field controller=plugin, task's fields and
// kv, given as key, value pairs (an odd last key is dropped). task is
// called only once the level is known to be enabled, so a disabled level
// costs a check and no allocation. An Entry without a Logger silences the
// line. The task and service fields are left out when the logger already
// carries swarmkit's task.id and service.id.
func Line(ctx context.Context, l *log.Entry, level log.Level, msg string, task func() Task, kv ...string) {
	if l == nil {
		l = FromContext(ctx)
	}
	if l.Logger == nil || !l.Logger.IsLevelEnabled(level) {
		return
	}
	t := task()
	fields := make(log.Fields, len(l.Data)+5+len(kv)/2)
	for k, v := range l.Data {
		fields[k] = v
	}
	fields["controller"] = "plugin"
	// swarmkit's agent logger already names the task and the service
	// (task.id, service.id): say it once.
	if _, ok := l.Data["task.id"]; !ok {
		fields["task"] = t.ID
	}
	if _, ok := l.Data["service.id"]; !ok {
		fields["service"] = t.Service
	}
	fields["plugin"] = t.Plugin
	if t.PluginID != "" {
		fields["plugin.id"] = t.PluginID
	}
	for i := 0; i+1 < len(kv); i += 2 {
		fields[kv[i]] = kv[i+1]
	}
	// One Entry with every field, rather than WithFields' copies of copies.
	e := &log.Entry{Logger: l.Logger, Data: fields, Context: l.Context}
	if e.Context == nil {
		e.Context = ctx
	}
	e.Log(level, msg)
}

// FromContext returns the logger ctx carries. swarmkit's agent attaches
// its per-task logger (fields task.id, service.id, module) with its own
// log package, whose context key github.com/containerd/log does not see,
// so that one comes first; then containerd/log's (moby's daemon), whose G
// falls back to its standard logger.
func FromContext(ctx context.Context) *log.Entry {
	if l := swarmlog.G(ctx); l != swarmlog.L {
		return l
	}
	return log.G(ctx)
}
