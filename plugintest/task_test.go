package plugintest

import (
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// NewTask encodes the spec as the daemon does: kind "plugin", payload typed
// types.docker.com/RuntimePlugin, decodable back to the same spec.
func TestNewTask(t *testing.T) {
	want := runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1", Env: []string{"A=1"}, Disabled: true}
	tk := NewTask("task-1", "svc-1", want)
	assert.Equal(t, tk.ID, "task-1")
	assert.Equal(t, tk.ServiceID, "svc-1")
	g := tk.Spec.GetGeneric()
	assert.Assert(t, g != nil)
	assert.Equal(t, g.Kind, "plugin")
	assert.Equal(t, g.Payload.TypeUrl, "types.docker.com/RuntimePlugin")
	got, err := DecodeSpec(tk)
	assert.NilError(t, err)
	assert.DeepEqual(t, got, want)
}

func TestDecodeSpecRefusesOtherTasks(t *testing.T) {
	_, err := DecodeSpec(&api.Task{ID: "t"})
	assert.Check(t, cerrdefs.IsInvalidArgument(err), "%v", err)
	tk := NewTask("t", "s", runtime.PluginSpec{})
	tk.Spec.GetGeneric().Payload.Value = []byte{0x0a, 0x05}
	_, err = DecodeSpec(tk)
	assert.Check(t, cerrdefs.IsInvalidArgument(err), "%v", err)
	assert.Check(t, is.ErrorContains(err, "task t"))
}
