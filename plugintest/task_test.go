package plugintest

import (
	"testing"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/gogo/protobuf/proto"
	"gotest.tools/v3/assert"
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
	var got runtime.PluginSpec
	assert.NilError(t, proto.Unmarshal(g.Payload.Value, &got))
	assert.DeepEqual(t, got, want)
}
