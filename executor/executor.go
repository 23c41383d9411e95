// Package executor is a swarmkit exec.Executor that runs plugin tasks: the
// tasks of a swarm plugin service (a service whose TaskTemplate.Runtime is
// "plugin", created through the Docker API), whose runtime is the generic
// "plugin" spec the Docker daemon builds.
// It is the reference for wiring this module into a swarmkit node.
//
// # Wiring
//
// A node needs one Executor, built on the node's plugin Backend (moby's
// *plugin.Manager, or any other plugin.Backend), and handed to swarmkit:
//
//	exe := executor.New(pluginManager,
//		executor.WithHostname("node-1"),
//		executor.WithControllerOptions(plugin.WithRegistryAuth(auth)),
//	)
//	n, err := node.New(&node.Config{
//		StateDir:         stateDir,
//		ListenRemoteAPI:  "0.0.0.0:2377",
//		ListenControlAPI: filepath.Join(stateDir, "control.sock"),
//		Executor:         exe,
//	})
//	// n.Start(ctx); <-n.Ready()
//
// A Docker daemon's node.Config carries more (its network provider, join
// address and token, ...); none of it concerns plugin tasks.
//
// Every node of the cluster, manager or worker, runs plugin tasks through its
// own Executor and Backend. The Example below starts a one-node swarm this
// way, creates a plugin service through the control API and waits until the
// plugin is installed and enabled.
//
// # What the Executor does
//
// Controller returns a [plugin.Controller], made by plugin.New with the
// options of WithControllerOptions, for a task whose runtime is
// api.TaskSpec_Generic with Kind "plugin" (plugin.RuntimeKind, compared
// case-insensitively as moby's executor and plugin.New do). Any other
// runtime, a container or network attachment included, is refused with an
// error that wraps exec.ErrRuntimeUnsupported and names what the task asked
// for; swarmkit then rejects the task.
//
// Describe reports the hostname, platform, engine description and resources
// given as options. It does not list installed plugins: plugin.Backend has no
// way to list them, and swarmkit's scheduler only uses that list for volume,
// network and log drivers, which a plugin task never requires.
//
// Configure and SetNetworkBootstrapKeys are no-ops: plugin tasks use neither
// node attachments nor overlay networks. The Executor does not implement
// exec.SecretsProvider, exec.ConfigsProvider or exec.VolumesProvider, so
// swarmkit does not hand it secrets, configs or volumes, which plugin tasks
// never reference.
//
// An Executor is safe for concurrent use; swarmkit calls it from the agent's
// goroutines.
package executor

import (
	"context"
	"fmt"
	"os"
	goruntime "runtime"
	"strings"
	"sync"

	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/moby/swarmkit/v2/api/naming"

	"github.com/seed-e85c93d5/plugin"
)

// Executor is a swarmkit exec.Executor for plugin tasks. Create it with New.
type Executor struct {
	backend plugin.Backend

	hostname  string
	platform  api.Platform
	engine    api.EngineDescription
	resources *api.Resources
	ctrlOpts  []plugin.Option

	mu   sync.Mutex
	node *api.Node // last node given to Configure
}

var _ exec.Executor = (*Executor)(nil)

// Option configures an Executor.
type Option func(*Executor)

// WithHostname sets the hostname that Describe reports. The default is
// os.Hostname(). swarmkit's node.Config.Hostname, when set, overrides it.
func WithHostname(name string) Option {
	return func(e *Executor) { e.hostname = name }
}

// WithPlatform sets the operating system and architecture that Describe
// reports, which service placement constraints (node.platform.os,
// node.platform.arch) match against. The default is runtime.GOOS and
// runtime.GOARCH.
func WithPlatform(os, arch string) Option {
	return func(e *Executor) { e.platform = api.Platform{OS: os, Architecture: arch} }
}

// WithEngine sets the engine description that Describe reports: the engine
// version, the engine labels that placement constraints
// (engine.labels.KEY) match against, and the plugins (drivers) swarmkit's
// scheduler may require. The default is empty.
func WithEngine(desc api.EngineDescription) Option {
	return func(e *Executor) { e.engine = *desc.Copy() }
}

// WithResources sets the resources that Describe reports. The default is
// none; plugin tasks reserve no resources.
func WithResources(r *api.Resources) Option {
	return func(e *Executor) { e.resources = r.Copy() }
}

// WithControllerOptions passes opts to plugin.New for every controller the
// Executor creates, for example plugin.WithRegistryAuth to pull from a
// private registry. Options given in several calls accumulate.
func WithControllerOptions(opts ...plugin.Option) Option {
	return func(e *Executor) { e.ctrlOpts = append(e.ctrlOpts, opts...) }
}

// New returns an Executor that runs plugin tasks against backend. backend is
// shared by every controller the Executor creates and must be safe for
// concurrent use (see plugin.Backend).
func New(backend plugin.Backend, opts ...Option) *Executor {
	e := &Executor{
		backend:  backend,
		platform: api.Platform{OS: goruntime.GOOS, Architecture: goruntime.GOARCH},
	}
	if h, err := os.Hostname(); err == nil {
		e.hostname = h
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Describe returns the node description built from the Executor's options.
// Each call returns a new copy.
func (e *Executor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	engine := e.engine.Copy()
	return &api.NodeDescription{
		Hostname:  e.hostname,
		Platform:  e.platform.Copy(),
		Engine:    engine,
		Resources: e.resources.Copy(),
	}, nil
}

// Configure records node, the node object as the managers see it, and
// otherwise does nothing: plugin tasks need no node-level setup.
func (e *Executor) Configure(ctx context.Context, node *api.Node) error {
	e.mu.Lock()
	e.node = node.Copy()
	e.mu.Unlock()
	return nil
}

// Node returns a copy of the node object last given to Configure, or nil.
func (e *Executor) Node() *api.Node {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.node.Copy()
}

// Controller returns a controller for t. For a plugin task it is the
// *plugin.Controller of plugin.New, given the WithControllerOptions; an error
// from New (a task without a usable plugin spec, plugin.ErrInvalidSpec) is
// returned as it is, and swarmkit rejects the task. Any other runtime is
// refused with an error that wraps exec.ErrRuntimeUnsupported.
func (e *Executor) Controller(t *api.Task) (exec.Controller, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: nil task", exec.ErrRuntimeUnsupported)
	}
	switch r := t.Spec.GetRuntime().(type) {
	case *api.TaskSpec_Generic:
		if r.Generic == nil {
			return nil, fmt.Errorf("%w: task %s has an empty generic runtime", exec.ErrRuntimeUnsupported, t.ID)
		}
		if !strings.EqualFold(r.Generic.Kind, plugin.RuntimeKind) {
			typeURL := ""
			if r.Generic.Payload != nil {
				typeURL = r.Generic.Payload.TypeUrl
			}
			return nil, fmt.Errorf("%w: task %s has generic runtime kind %q (payload type %q); this executor runs only kind %q",
				exec.ErrRuntimeUnsupported, t.ID, r.Generic.Kind, typeURL, plugin.RuntimeKind)
		}
		c, err := plugin.New(e.backend, t, e.ctrlOpts...)
		if err != nil {
			return nil, err
		}
		return c, nil
	case nil:
		return nil, fmt.Errorf("%w: task %s has no runtime; this executor runs only generic runtime kind %q",
			exec.ErrRuntimeUnsupported, t.ID, plugin.RuntimeKind)
	default:
		name, err := naming.Runtime(t.Spec)
		if err != nil {
			name = fmt.Sprintf("%T", r)
		}
		return nil, fmt.Errorf("%w: task %s has %s runtime; this executor runs only generic runtime kind %q",
			exec.ErrRuntimeUnsupported, t.ID, name, plugin.RuntimeKind)
	}
}

// SetNetworkBootstrapKeys does nothing: plugin tasks use no overlay networks.
func (e *Executor) SetNetworkBootstrapKeys([]*api.EncryptionKey) error {
	return nil
}
