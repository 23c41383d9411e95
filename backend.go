package plugin

import (
	"context"
	"io"
	"net/http"

	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/opencontainers/go-digest"

	"github.com/seed-e85c93d5/plugin/internal/restart"
)

// This file is the daemon's side of the contract: the Backend a daemon
// gives its Controllers and the optional interfaces its Manager may
// satisfy, and the three calls a daemon's patches make for restart safety
// (RestartSafe, ShuttingDown, LeftSwarm; the mechanism is package
// internal/restart).

// Backend is the interface for interacting with the plugin manager.
// Controller actions are passed to the configured backend to do the real work.
//
// The method set is exactly that of the upstream package
// (github.com/docker/docker/daemon/cluster/controllers/plugin), so moby's
// *plugin.Manager satisfies it, and so does the in-memory fake in the
// plugintest package.
//
// A Backend is shared by every Controller of a node and is called from many
// goroutines at once; implementations must be safe for concurrent use.
//
// The Controller relies on the Manager's observable rules: names are
// normalised by Pull ("vol" becomes "vol:latest"); Get resolves a full ID, a
// name or a unique ID prefix and fails with an error classified NotFound
// (github.com/containerd/errdefs) for an unknown plugin; a non-forced Disable
// or Remove is refused while the plugin is in use; SubscribeEvents delivers
// only events whose type and plugin ID match one of the given events, and its
// cancel function may be called more than once.
type Backend interface {
	Disable(name string, config *backend.PluginDisableConfig) error
	Enable(name string, config *backend.PluginEnableConfig) error
	Remove(name string, config *backend.PluginRmConfig) error
	Pull(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer, opts ...plugin.CreateOpt) error
	Upgrade(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer) error
	Get(name string) (*v2.Plugin, error)
	SubscribeEvents(buffer int, events ...plugin.Event) (eventCh <-chan interface{}, cancel func())
}

// Setter is implemented by backends that can change the environment of an
// installed plugin, as moby's *plugin.Manager does. It is optional: when the
// Backend given to a Controller also implements Setter, Prepare applies the
// spec's Env to a plugin it upgrades, which Upgrade alone cannot do.
//
// args are "KEY=VALUE" strings, the form of runtime.PluginSpec.Env.
type Setter interface {
	Set(name string, args []string) error
}

// Privileger is implemented by backends that can tell which privileges the
// plugin at a remote requires without installing it, as moby's
// *plugin.Manager does (its Privileges fetches only the manifest and the
// config). It is optional. When the Backend given to a Controller also
// implements Privileger, Prepare compares the remote's privileges with the
// service's grant before it pulls, and before it disables an installed
// plugin to upgrade it, so that a refused upgrade leaves the running
// version in service. With or without it, Prepare checks the installed
// config after every Pull and Upgrade (see ErrIncorrectPrivileges).
//
// An empty answer with a nil error is taken as "unknown" when the service
// grants privileges, because the Manager of docker v28.3.0 and of moby v2
// answers so when its fetch fails; the check after the pull then decides.
type Privileger interface {
	Privileges(ctx context.Context, ref reference.Named, metaHeader http.Header, authConfig *registry.AuthConfig) (types.PluginPrivileges, error)
}

// ManifestResolver is implemented by backends that can tell which manifest
// a remote names now without pulling it (one manifest request to the
// registry). It is optional. Prepare asks it before it disables an
// installed plugin of the service for a tag remote: a tag whose manifest
// is the installed one (v2.Plugin's Manifest) is not upgraded, so a new
// task of an unchanged spec takes nothing out of service, and a registry
// that cannot be reached leaves the installed version in service.
//
// For moby's *plugin.Manager, which has no such method, the Controller asks
// the registry itself (see WithRegistryHosts); for any other Backend that
// does not implement it, Prepare upgrades a tag on every new task, as
// upstream does. A Backend that wraps the Manager implements it with one
// call of package remotedigest's Resolve (see its example).
type ManifestResolver interface {
	ResolveManifest(ctx context.Context, ref reference.Named, authConfig *registry.AuthConfig) (digest.Digest, error)
}

// PluginProber is implemented by backends that can ask an enabled plugin
// whether it answers, as the fake in package plugintest does to model slow
// and hung plugins. It is optional. Without it, the Controller probes a
// plugin itself over the socket the Manager gives it (v2.Plugin's Addr),
// with the handshake and a cheap call of each interface type (see
// WithHealthCheck), and a plugin with no socket address (a Backend that
// runs no process) is not probed at all, as upstream.
type PluginProber interface {
	ProbePlugin(ctx context.Context, id string) error
}

// Restart safety: the daemon's entries. The mechanism is package
// internal/restart; a Controller meets it through its guard field and its
// asTask adapter (see restart.Task).

// RestartSafe returns an exec.Executor that gets its controllers from e and
// keeps the node's plugins installed and enabled across a restart of the
// node, while leaving the swarm still removes them. A daemon calls it where
// it builds the node's executor, every time it starts the swarm node, and
// calls ShuttingDown(dir) before it stops the node for a shutdown.
//
// backend is the node's plugin Backend, the one e's Controllers use. dir
// holds the record of kept plugins (the file swarm-plugins-kept.json, which
// exists only while plugins are kept); it must survive the restart and must
// not be wiped with the swarm state, so that a plugin kept for a swarm that
// is gone when the node comes back is still removed: a daemon gives its
// data root, the parent of its swarm directory. dir also names the node for
// ShuttingDown; a later call with the same dir takes its place.
//
// What the returned executor does:
//
//   - Every call goes to e. Controller returns what e returns; a
//     *Controller among them (the controller of a plugin task) is watched.
//   - After ShuttingDown(dir), a watched Controller's Remove releases its
//     task's reference as usual but, where it would remove its service's
//     plugin, it records the plugin in dir instead and leaves it installed.
//     The Manager restores it, enabled, when the daemon starts again.
//   - After the restart, the first complete set of assignments decides
//     (swarmkit hands the executor one each time the node connects to a
//     manager, and one with no task when the node leaves): a recorded
//     plugin that a task of the same service on this node now uses stays
//     and is that task's again (a resumed task's Wait takes it over without
//     a pull); every other recorded plugin is removed then, as its task's
//     Remove would have removed it at the shutdown. A task whose desired
//     state is REMOVE (its service was deleted) claims nothing. So a
//     service deleted while the node was down, a task the managers no
//     longer assign, a leave, and swarm state wiped while the daemon was
//     down all end with the plugin removed; a plugin a person or another
//     service installed meanwhile under the name is never touched. (A node
//     whose state was wiped joins as a new node, whose first complete set
//     is empty: its services' new tasks pull their plugins again.) A
//     removal that fails is tried again at the next complete set, and so
//     is the removal of a plugin still in use (a volume on the driver).
//     The removals run on a goroutine of the node's own, never on
//     swarmkit's worker. Until the first complete set, and while a
//     recorded plugin of its name is being removed, a Prepare of another
//     service's task for that name waits, rather than fail with
//     ErrPluginExists.
//
// The executor knows a complete set by the calls swarmkit v2's worker makes
// for it, in order: Secrets().Reset(), then Controller for each new task,
// then Volumes(). So that it sees them, the returned executor always
// implements exec.SecretsProvider, exec.ConfigsProvider and
// exec.VolumesProvider, handing e's managers through when e implements
// them and inert ones when it does not (swarmkit then no longer logs that
// the executor ignores secrets, configs or volumes). Plugins whose
// Controller e wraps in a type of its own are not kept: their Remove
// behaves as it always does.
//
// RestartSafe returns an error classified invalid argument for a nil e or
// backend or an empty dir. A record it cannot read is set aside (renamed
// swarm-plugins-kept.unreadable-TIME.json, never overwritten), logged at
// error, and the plugins it lists stay installed.
func RestartSafe(e exec.Executor, backend Backend, dir string) (exec.Executor, error) {
	switch {
	case isNil(e):
		return nil, withDetail(errRestartSafe, "needs an executor, got nil", nil)
	case isNil(backend):
		return nil, withDetail(errRestartSafe, "needs a backend, got nil", nil)
	case dir == "":
		return nil, withDetail(errRestartSafe, "needs a directory for its record, got \"\"", nil)
	}
	g := restart.New(backend, dir)
	return g.Wrap(e, func(c exec.Controller) (restart.Task, bool) {
		p, ok := c.(*Controller)
		if !ok || p == nil {
			return nil, false
		}
		p.guard = g
		return p.asTask, true
	}), nil
}

// ShuttingDown tells the executor RestartSafe returned for dir that its node
// is stopping because the daemon shuts down, not because it leaves the
// swarm: from now on its Controllers keep their plugins (see RestartSafe).
// A daemon calls it once, just before it stops the swarm node for a
// shutdown, and never on "docker swarm leave". It is safe to call from any
// goroutine, more than once, and for a dir no executor has (a daemon not in
// a swarm): then it does nothing. It cannot be undone; the next start of the
// node calls RestartSafe again.
func ShuttingDown(dir string) { restart.ShuttingDown(dir) }

// LeftSwarm tells the node's plugin controllers that the daemon is no longer
// in a swarm: it removes every plugin that dir's record lists as kept for
// a restart, with Remove's checks (a plugin already gone is fine, one now
// a person's or another service's is left alone, one still in use stays
// recorded), and then deletes the record. A daemon calls it after
// "docker swarm leave" has stopped the node (Cluster.Leave), and when it
// starts with no swarm state (Cluster.Start), so that the plugins kept by
// a node that never ran its agent again (locked, its certificates
// expired, its swarm directory deleted) do not outlive its swarm.
//
// backend is the daemon's plugin Backend. It returns the errors of the
// removals that failed, joined; those plugins stay recorded and the next
// call tries again. It returns at once when nothing is recorded, and is
// safe to call from any goroutine.
func LeftSwarm(backend Backend, dir string) error {
	switch {
	case isNil(backend):
		return withDetail(errRestartSafe, "LeftSwarm needs a backend, got nil", nil)
	case dir == "":
		return withDetail(errRestartSafe, "LeftSwarm needs the record's directory, got \"\"", nil)
	}
	return restart.LeftSwarm(backend, dir)
}

// controllerTask is a Controller as its node's restart guard sees it.
type controllerTask struct{ c *Controller }

func (t *controllerTask) TaskID() string          { return t.c.taskID }
func (t *controllerTask) Service() string         { return t.c.service }
func (t *controllerTask) Name() string            { return t.c.d.Spec.Name }
func (t *controllerTask) Key() string             { return t.c.d.Key }
func (t *controllerTask) BoundID() string         { return t.c.boundID() }
func (t *controllerTask) Owns(pl *v2.Plugin) bool { return t.c.owns(pl) }
func (t *controllerTask) Closed() <-chan struct{} { return t.c.closedCh }
func (t *controllerTask) Log(ctx context.Context, level log.Level, msg string, kv ...string) {
	t.c.log(ctx, level, msg, kv...)
}
