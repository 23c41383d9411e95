package restart_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm/runtime"
	mobyplugin "github.com/docker/docker/plugin"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
	"gotest.tools/v3/assert"

	plugin "github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
	"github.com/seed-e85c93d5/plugin/internal/restart"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

func TestMain(m *testing.M) {
	logrus.SetOutput(io.Discard)
	goleak.VerifyTestMain(m)
}

const (
	service = "svc-1"
	remote  = "example.com/acme/vol:1.0"
	remote2 = "example.com/acme/vol:2.0"
	name    = "vol"
)

func task(t testing.TB, id, serviceID string, spec runtime.PluginSpec) *api.Task {
	t.Helper()
	return plugintest.NewTask(id, serviceID, spec)
}

func spec(r string, disabled bool) runtime.PluginSpec {
	return runtime.PluginSpec{Name: name, Remote: r, Disabled: disabled}
}

// install pulls remote as name straight into b, with no controller: as a
// person, another service (opts) or the daemon before a restart would.
func install(t testing.TB, b *plugintest.Backend, opts ...mobyplugin.CreateOpt) {
	t.Helper()
	ref, err := reference.ParseNormalizedNamed(remote)
	assert.NilError(t, err)
	assert.NilError(t, b.Pull(context.Background(), ref, name, nil, &registry.AuthConfig{}, nil, io.Discard, opts...))
}

// state returns the plugin's snapshot and reference count; found reports
// whether it exists.
func state(t testing.TB, b *plugintest.Backend, n string) (p types.Plugin, refs int, found bool) {
	t.Helper()
	p, refs, err := b.Plugin(n)
	if cerrdefs.IsNotFound(err) {
		return p, 0, false
	}
	assert.NilError(t, err)
	return p, refs, true
}

// owner returns the service that owns the plugin (set once, at Pull).
func owner(t testing.TB, b *plugintest.Backend, n string) string {
	t.Helper()
	pl, err := b.Get(n)
	assert.NilError(t, err)
	return pl.SwarmServiceID
}

func countCalls(b *plugintest.Backend, method string) int {
	n := 0
	for _, c := range b.Calls() {
		if c.Method == method {
			n++
		}
	}
	return n
}

// result waits for the result of a step run on another goroutine.
func result(t testing.TB, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the step did not return")
		return nil
	}
}

// waitForStack waits until a goroutine is in fn, as the stack shows.
func waitForStack(t testing.TB, fn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for buf := make([]byte, 1<<20); ; {
		if strings.Contains(string(buf[:goruntime.Stack(buf, true)]), fn) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine reached %s", fn)
		}
		goruntime.Gosched()
	}
}

// node is a node's executor as swarmkit's worker sees it: a RestartSafe
// executor over the reference executor, with its record in dir.
type node struct {
	t   testing.TB
	x   exec.Executor
	dir string
}

func startNode(t testing.TB, b plugin.Backend, dir string) *node {
	t.Helper()
	x, err := plugin.RestartSafe(executor.New(b), b, dir)
	assert.NilError(t, err)
	return &node{t: t, x: x, dir: dir}
}

// completeSet makes the calls swarmkit v2's worker.Assign makes on the
// executor for a complete set of assignments (agent/worker.go: secrets,
// configs, the Controllers of the tasks it has none for, volumes), waits
// for the sweep it starts, and returns the new Controllers.
func (n *node) completeSet(tasks ...*api.Task) []*plugin.Controller {
	n.t.Helper()
	secrets := n.x.(exec.SecretsProvider).Secrets()
	secrets.Reset()
	secrets.Add()
	configs := n.x.(exec.ConfigsProvider).Configs()
	configs.Reset()
	configs.Add()
	ctrls := n.controllers(tasks...)
	volumes := n.x.(exec.VolumesProvider).Volumes()
	volumes.Remove(nil, func(string) {})
	volumes.Add()
	restart.WaitSweep(n.dir) // the removals run on the guard's goroutine
	return ctrls
}

// incrementalSet makes the calls of worker.Update.
func (n *node) incrementalSet(tasks ...*api.Task) []*plugin.Controller {
	n.t.Helper()
	secrets := n.x.(exec.SecretsProvider).Secrets()
	secrets.Remove(nil)
	secrets.Add()
	configs := n.x.(exec.ConfigsProvider).Configs()
	configs.Remove(nil)
	configs.Add()
	ctrls := n.controllers(tasks...)
	n.x.(exec.VolumesProvider).Volumes().Add()
	return ctrls
}

func (n *node) controllers(tasks ...*api.Task) []*plugin.Controller {
	n.t.Helper()
	var ctrls []*plugin.Controller
	for _, t := range tasks {
		c, err := n.x.Controller(t)
		assert.NilError(n.t, err)
		ctrls = append(ctrls, c.(*plugin.Controller))
	}
	return ctrls
}

// leave is what swarmkit's agent does when the node stops, for a leave and
// for a shutdown alike: an empty complete set, then Remove and Close on
// every Controller.
func (n *node) leave(ctrls ...*plugin.Controller) {
	n.t.Helper()
	n.completeSet()
	for _, c := range ctrls {
		assert.NilError(n.t, c.Remove(context.Background()))
		assert.NilError(n.t, c.Close())
	}
}

// assertPlugin checks whether the plugin is installed in b and whether it
// is recorded as kept.
func (n *node) assertPlugin(b *plugintest.Backend, installed, recorded bool, msg ...any) {
	n.t.Helper()
	_, _, found := state(n.t, b, name)
	assert.Equal(n.t, found, installed, msg...)
	assert.Equal(n.t, n.recorded(), recorded, msg...)
}

func (n *node) recorded() bool {
	_, err := os.Stat(filepath.Join(n.dir, keptplugins.FileName))
	return err == nil
}

// waitAsync runs Wait on its own goroutine and returns its result channel
// once Wait is waiting: subscribed, past its state check, and selecting on
// its events. An out-of-band change made earlier could be reported as
// "mismatched plugin state" instead of by its event.
func waitAsync(t testing.TB, b *plugintest.Backend, c *plugin.Controller, ctx context.Context) <-chan error {
	t.Helper()
	before := b.Subscribers()
	waiting := &selectingCtx{Context: ctx, selecting: make(chan struct{}), subscribed: func() bool { return b.Subscribers() > before }}
	done := make(chan error, 1)
	go func() { done <- c.Wait(waiting) }()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-waiting.selecting:
	case err := <-done:
		t.Fatalf("Wait returned before waiting: %v", err)
	case <-timeout.C:
		t.Fatal("Wait did not start waiting")
	}
	assert.Equal(t, b.Subscribers(), before+1, "Wait waits on its own subscription")
	return done
}

// selectingCtx tells when Wait first asks for Done once subscribed, which
// it does only in the select of its event loop. (A resumed, unbound Wait
// also asks for Done before subscribing, while it waits for the plugin's
// lock to bind.)
type selectingCtx struct {
	context.Context
	subscribed func() bool
	once       sync.Once
	selecting  chan struct{}
}

func (c *selectingCtx) Done() <-chan struct{} {
	if c.subscribed() {
		c.once.Do(func() { close(c.selecting) })
	}
	return c.Context.Done()
}

func methods(b *plugintest.Backend) []string {
	var out []string
	for _, c := range b.Calls() {
		out = append(out, c.Method)
	}
	return out
}
