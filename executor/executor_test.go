package executor_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	goruntime "runtime"
	"testing"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	dockerplugin "github.com/docker/docker/plugin"
	gogotypes "github.com/gogo/protobuf/types"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

func pluginTask(t *testing.T, kind string, spec runtime.PluginSpec) *api.Task {
	t.Helper()
	tk := plugintest.NewTask("task1", "svc1", spec)
	tk.Spec.GetGeneric().Kind = kind
	return tk
}

func TestControllerPluginTask(t *testing.T) {
	e := executor.New(plugintest.NewBackend())
	ctlr, err := e.Controller(pluginTask(t, "plugin", runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1"}))
	assert.NilError(t, err)
	_, ok := ctlr.(*plugin.Controller)
	assert.Check(t, ok, "got %T, want *plugin.Controller", ctlr)

	// The kind is matched case-insensitively, as moby's executor does.
	ctlr, err = e.Controller(pluginTask(t, "Plugin", runtime.PluginSpec{Name: "vol", Remote: "example.com/vol:1"}))
	assert.NilError(t, err)
	_, ok = ctlr.(*plugin.Controller)
	assert.Check(t, ok, "got %T, want *plugin.Controller", ctlr)
}

func TestControllerUnsupportedRuntimes(t *testing.T) {
	e := executor.New(nil)
	generic := func(kind, typeURL string) *api.Task {
		return &api.Task{ID: "t1", Spec: api.TaskSpec{Runtime: &api.TaskSpec_Generic{Generic: &api.GenericRuntimeSpec{
			Kind: kind, Payload: &gogotypes.Any{TypeUrl: typeURL, Value: []byte{}},
		}}}}
	}
	for _, tc := range []struct {
		name string
		task *api.Task
		want []string // substrings of the error
	}{
		{"other generic kind", generic("lambda", "example.com/Lambda"), []string{`"lambda"`, `"example.com/Lambda"`, "t1"}},
		{"empty generic", &api.Task{ID: "t1", Spec: api.TaskSpec{Runtime: &api.TaskSpec_Generic{}}}, []string{"empty generic runtime"}},
		{"container", &api.Task{ID: "t1", Spec: api.TaskSpec{Runtime: &api.TaskSpec_Container{Container: &api.ContainerSpec{Image: "busybox"}}}}, []string{"container runtime"}},
		{"attachment", &api.Task{ID: "t1", Spec: api.TaskSpec{Runtime: &api.TaskSpec_Attachment{Attachment: &api.NetworkAttachmentSpec{}}}}, []string{"attachment runtime"}},
		{"no runtime", &api.Task{ID: "t1"}, []string{"no runtime"}},
		{"nil task", nil, []string{"nil task"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctlr, err := e.Controller(tc.task)
			assert.Check(t, ctlr == nil)
			assert.Check(t, errors.Is(err, exec.ErrRuntimeUnsupported), "%v", err)
			for _, s := range tc.want {
				assert.Check(t, is.Contains(err.Error(), s))
			}
		})
	}
}

// A plugin task without a usable spec is not an unsupported runtime: the
// error is plugin.New's, as it is.
func TestControllerInvalidPluginSpec(t *testing.T) {
	e := executor.New(plugintest.NewBackend())
	for name, g := range map[string]*api.GenericRuntimeSpec{
		"no payload":  {Kind: "plugin"},
		"bad payload": {Kind: "plugin", Payload: &gogotypes.Any{TypeUrl: "types.docker.com/RuntimePlugin", Value: []byte{0xff, 0xff}}},
	} {
		task := &api.Task{ID: "t1", Spec: api.TaskSpec{Runtime: &api.TaskSpec_Generic{Generic: g}}}
		_, err := e.Controller(task)
		assert.Check(t, errors.Is(err, plugin.ErrInvalidSpec), "%s: %v", name, err)
		assert.Check(t, !errors.Is(err, exec.ErrRuntimeUnsupported), name)
	}
}

type recordingBackend struct {
	plugin.Backend
	got *registry.AuthConfig
}

func (b *recordingBackend) Pull(ctx context.Context, ref reference.Named, name string, h http.Header, auth *registry.AuthConfig, privs types.PluginPrivileges, out io.Writer, opts ...dockerplugin.CreateOpt) error {
	b.got = auth
	return b.Backend.Pull(ctx, ref, name, h, auth, privs, out, opts...)
}

// WithControllerOptions reaches every controller: here the registry
// credentials Prepare hands to the backend's Pull.
func TestWithControllerOptions(t *testing.T) {
	b := &recordingBackend{Backend: plugintest.NewBackend()}
	auth := &registry.AuthConfig{Username: "u", Password: "p"}
	e := executor.New(b, executor.WithControllerOptions(plugin.WithRegistryAuth(func(context.Context, reference.Named) (*registry.AuthConfig, error) {
		return auth, nil
	})))
	ctlr, err := e.Controller(pluginTask(t, "plugin", runtime.PluginSpec{Remote: "example.com/vol:1"}))
	assert.NilError(t, err)
	assert.NilError(t, ctlr.Prepare(context.Background()))
	assert.Check(t, is.Equal(b.got.Username, "u"))
}

func TestDescribeDefaults(t *testing.T) {
	host, err := os.Hostname()
	assert.NilError(t, err)
	desc, err := executor.New(nil).Describe(context.Background())
	assert.NilError(t, err)
	assert.Check(t, is.Equal(desc.Hostname, host))
	assert.Check(t, is.DeepEqual(desc.Platform, &api.Platform{OS: goruntime.GOOS, Architecture: goruntime.GOARCH}))
	assert.Check(t, desc.Engine != nil)
	assert.Check(t, desc.Resources == nil)
}

func TestDescribeOptions(t *testing.T) {
	engine := api.EngineDescription{
		EngineVersion: "28.3.0",
		Labels:        map[string]string{"zone": "a"},
		Plugins:       []api.PluginDescription{{Type: "Volume", Name: "vol"}},
	}
	res := &api.Resources{NanoCPUs: 2e9, MemoryBytes: 1 << 30}
	e := executor.New(nil,
		executor.WithHostname("node-1"),
		executor.WithPlatform("linux", "arm64"),
		executor.WithEngine(engine),
		executor.WithResources(res),
	)
	// The options copy what they are given.
	engine.Labels["zone"] = "b"
	res.NanoCPUs = 1

	desc, err := e.Describe(context.Background())
	assert.NilError(t, err)
	assert.Check(t, is.Equal(desc.Hostname, "node-1"))
	assert.Check(t, is.DeepEqual(desc.Platform, &api.Platform{OS: "linux", Architecture: "arm64"}))
	assert.Check(t, is.Equal(desc.Engine.EngineVersion, "28.3.0"))
	assert.Check(t, is.DeepEqual(desc.Engine.Labels, map[string]string{"zone": "a"}))
	assert.Check(t, is.DeepEqual(desc.Engine.Plugins, []api.PluginDescription{{Type: "Volume", Name: "vol"}}))
	assert.Check(t, is.Equal(desc.Resources.NanoCPUs, int64(2e9)))

	// Each description is a fresh copy.
	desc.Engine.Labels["zone"] = "c"
	desc.Hostname = "x"
	again, err := e.Describe(context.Background())
	assert.NilError(t, err)
	assert.Check(t, is.Equal(again.Engine.Labels["zone"], "a"))
	assert.Check(t, is.Equal(again.Hostname, "node-1"))
}

func TestConfigureAndKeys(t *testing.T) {
	e := executor.New(nil)
	assert.Check(t, e.Node() == nil)
	n := &api.Node{ID: "n1"}
	assert.NilError(t, e.Configure(context.Background(), n))
	n.ID = "changed"
	assert.Check(t, is.Equal(e.Node().ID, "n1"))
	assert.NilError(t, e.SetNetworkBootstrapKeys([]*api.EncryptionKey{{Subsystem: "x"}}))
}
