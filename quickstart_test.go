package plugin_test

import (
	"strings"
	"testing"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// quickStart is the README's quick start, word for word.
type quickStart struct{ plugins plugin.Backend }

func (e *quickStart) Controller(t *api.Task) (exec.Controller, error) {
	if g := t.Spec.GetGeneric(); g != nil && strings.EqualFold(g.Kind, plugin.RuntimeKind) {
		// e.plugins is the daemon's *plugin.Manager (or plugintest.NewBackend() in tests).
		c, err := plugin.New(e.plugins, t)
		if err != nil {
			return nil, err // not c: a nil *Controller in an exec.Controller is not nil
		}
		return c, nil
	}
	return nil, exec.ErrRuntimeUnsupported
}

// The quick start hands swarmkit a nil exec.Controller when New fails, so
// nothing calls Close on a nil *Controller, and it takes the kind in any
// case, as package executor does.
func TestQuickStart(t *testing.T) {
	e := &quickStart{plugins: plugintest.NewBackend()}
	c, err := e.Controller(plugintest.NewTask("task-1", "svc", runtime.PluginSpec{Remote: "vol"}))
	assert.NilError(t, err)
	assert.NilError(t, c.Close())

	bad := plugintest.NewTask("task-2", "svc", runtime.PluginSpec{Remote: "vol"})
	bad.Spec.GetGeneric().Payload.Value = []byte{0xff}
	c, err = e.Controller(bad)
	assert.Assert(t, err != nil)
	assert.Assert(t, c == nil, "a failed New must give swarmkit a nil Controller")

	upper := plugintest.NewTask("task-3", "svc", runtime.PluginSpec{Remote: "vol"})
	upper.Spec.GetGeneric().Kind = "PLUGIN"
	c, err = e.Controller(upper)
	assert.NilError(t, err)
	assert.NilError(t, c.Close())
}
