package bench

import (
	"testing"

	swarmlog "github.com/moby/swarmkit/v2/log"
	"github.com/sirupsen/logrus"
)

// BenchmarkInfoLine measures one info line written through the agent's
// logger (agentContext) with logrus' default TextFormatter to io.Discard,
// with no controller around it. It is the floor under any controller that
// writes the three info lines per task lifecycle that ours writes (plugin
// pulled, enabled, removed): three times this is what those lines cost at
// least, however they are built.
//
//   - fields=none: the message alone (plus the agent's own module field),
//     the cheapest line anyone can write through that logger;
//   - fields=task: with the fields ours adds to every line (controller,
//     task, service, plugin, plugin.id), added with WithFields. Their
//     values are variables, as in a controller: boxing a constant string
//     into an interface costs nothing, boxing a variable one allocates.
//
// At warn (BENCH_LOG_LEVEL=warn) logrus writes nothing: fields=none costs
// a level check only, while fields=task still builds its Entry, because
// WithFields runs before the level check (ours checks the level first).
func BenchmarkInfoLine(b *testing.B) {
	ctx := agentContext()
	b.Run("fields=none", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			swarmlog.G(ctx).Info("plugin enabled")
		}
	})
	b.Run("fields=task", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			swarmlog.G(ctx).WithFields(logrus.Fields{
				"controller": "plugin",
				"task":       lineValues.task,
				"service":    lineValues.service,
				"plugin":     lineValues.plugin,
				"plugin.id":  lineValues.pluginID,
			}).Info("plugin enabled")
		}
	})
}

// lineValues are BenchmarkInfoLine's field values, in a variable so that
// the compiler cannot treat them as constants.
var lineValues = struct{ task, service, plugin, pluginID string }{
	taskID, serviceID, pluginName, "4e3b8b2c2a1f6d2e9c7b5a3f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d",
}
