// Package plugin is a drop-in replacement for Docker's swarm plugin
// controller, github.com/docker/docker/daemon/cluster/controllers/plugin
// (moby v28.3.0): change the import path and everything compiles and
// behaves as before, minus upstream's bugs, plus registry credentials,
// restart safety and classified errors. A test suite written against
// upstream's controller, with its own fake Backend, passes unchanged after
// the import swap; upstream_compat_test.go runs upstream's own scenarios
// with a mock like upstream's to prove it.
//
// It builds with every docker/docker v28 release from v28.3.0 to v28.5.2
// (CI checks v28.3.3, v28.4.0 and v28.5.2); Go's minimal version selection
// picks a later release a program requires, with nothing to configure.
//
// # Plugin tasks
//
// A swarm "plugin service" asks every node to run one managed plugin (for
// example a volume driver) in a desired state. Its tasks carry a generic
// runtime of kind "plugin" whose payload is a runtime.PluginSpec: Name,
// Remote (the image reference), Privileges, Disabled and Env. A node's
// exec.Executor returns a Controller for each such task; the Controller
// never runs anything itself but drives the node's plugin manager through
// the Backend interface, whose real implementation is moby's
// *plugin.Manager. For unit tests, package plugintest provides a faithful
// in-memory Backend.
//
//	func (e *executor) Controller(t *api.Task) (exec.Controller, error) {
//		if g := t.Spec.GetGeneric(); g != nil && g.Kind == plugin.RuntimeKind {
//			return plugin.New(e.pluginManager, t, plugin.WithRegistryAuth(e.auth))
//		}
//		return nil, exec.ErrRuntimeUnsupported
//	}
//
// # Lifecycle: who calls what
//
// swarmkit's agent drives each task with exec.Do, one step at a time on the
// task's goroutine:
//
//   - Prepare installs the plugin (Pull) or brings this service's plugin to
//     the spec's remote (Upgrade), and takes the task's reference on it.
//   - Start enables the plugin, or disables it when the spec says Disabled.
//   - Wait blocks until the plugin leaves the spec's state: it returns an
//     error when the plugin is disabled, enabled or removed behind the
//     task's back, or when its context ends (an update or a shutdown).
//   - Update, Shutdown and Terminate have no effect: the plugin is shared
//     and outlives any one task.
//
// When the task is no longer assigned, the worker calls Remove and then
// Close from another goroutine, without waiting for a cancelled Prepare or
// Wait to return; a Controller is safe for that (and for any other
// concurrent use). Remove releases the task's reference and removes the
// plugin when none remains. After an agent restart, swarmkit resumes a
// running task on a new Controller and calls Wait (or Remove) without
// Prepare: the Controller finds its plugin from the task's spec.
//
// Temporary errors (exec.IsTemporary) make exec.Do retry the step in place
// after a second; any other error fails (or rejects) the task.
//
// # Shared references
//
// Many tasks (one per service update, and a task per node) point to the same
// plugin, so the Controller counts them with the plugin's own reference
// count (v2.Plugin.Acquire and Release): each task holds exactly one
// reference from the first time it binds to the plugin until Remove,
// however often swarmkit retries a step or recreates the Controller. The
// last task's Remove removes the plugin. A plugin the task's service does
// not own (installed by a person, by "docker plugin install", or by another
// service) is never upgraded, disabled or removed.
//
// The Manager refuses a plain Disable while any reference is held, and the
// service's own tasks hold references, so a plain Disable of a managed
// plugin can never succeed. The Controller therefore force-disables, with
// two rules for references that are not the service's tasks (a volume
// created on the driver, a container logging through it):
//
//   - A change the spec asks for (a new remote, a settable env value) is
//     made as stock dockerd makes it: force-disable, change, and Start
//     enables the plugin again. A warn line says how many other references
//     were held.
//   - A spec that says Disabled leaves the plugin running while they hold
//     it: Prepare and Start return the temporary ErrPluginInUse, which shows
//     in the task's status, and Start disables the plugin once they let go.
//     Prepare checks this before upgrading anything, so a retried task does
//     not disable, upgrade and re-enable the plugin every second.
//
// # Env
//
// An installed plugin gets the spec's Env through the Backend's Set (when
// it implements Setter, as moby's Manager does), but only the entries Set
// accepts: "KEY=VALUE" whose key the plugin's config declares with a
// settable value. The rest (entries without "=", undeclared keys, keys the
// config does not let be set) are skipped and their keys logged once per
// task at warn. A key given twice counts once, its last value, as the
// Manager's WithEnv does at install (where Pull applies the whole Env).
//
// # When a plugin is out of service
//
// Prepare of a new task on a node that runs the service's plugin decides
// before it disables anything. For a tag remote it asks which manifest the
// tag names now (a ManifestResolver Backend, or, for moby's Manager, the
// registry itself: one manifest request):
//
//   - Nothing changed (a forced update, a task replaced with the same
//     spec, a worker that was marked down during its restart): nothing is
//     disabled, upgraded or set. The task runs on the plugin as it is.
//   - Only a settable env value changed: disable, Set and enable, all in
//     Prepare, so the outage is the Manager's own work (on a forked
//     dockerd v28.3.0, its disable, set and enable take under 0.6 s), not
//     also swarmkit's round trip between Prepare and Start.
//   - The tag names a new manifest, or the spec a new remote: disable,
//     Upgrade (which downloads inside, because the Manager refuses to
//     upgrade an enabled plugin and has no prefetch), then enable, in
//     Prepare too. The outage includes the download of what is new.
//   - Prepare enables again only a plugin that was enabled, for a spec
//     that does not say Disabled; otherwise Start brings it to the spec's
//     state. Start then waits for the plugin to answer (see Readiness and
//     liveness), and reports its failures, as before.
//   - The registry cannot be reached: the installed plugin of the spec's
//     remote stays in service and the task runs on it (one warning); a new
//     remote gets a temporary error, with nothing disabled, until the
//     registry answers.
//   - Any failure after the disable enables the plugin again, except a
//     refused grant (see ErrIncorrectPrivileges).
//
// A Backend that is neither moby's Manager nor a ManifestResolver (a
// hand-written fake) keeps upstream's rule: a tag is upgraded, with its
// disable, by every new task.
//
// # Readiness and liveness
//
// Start returns nil only once the enabled plugin answers its protocol over
// its socket: Plugin.Activate, then a cheap call of each interface type
// moby knows (CSI's Identity.Probe for CSI plugins). While it warms up,
// Start returns the temporary ErrPluginNotAnswering, and it fails the task
// after the enable timeout. Wait probes at an interval (every 10 s, a 5 s
// timeout, 3 misses in a row by default; WithHealthCheck) and fails the
// task with ErrPluginNotAnswering; the next task's Start restarts that
// plugin if it still does not answer, and only then. A plugin the
// Controller cannot probe (no socket address, no PluginProber Backend) is
// trusted as upstream trusts it.
//
// # Privileges
//
// The spec's Privileges are the operator's grant, and the Controller
// enforces it whatever the daemon's Manager checks: every docker/docker
// v28 release (v28.3.0 to v28.5.2) compares a grant with the plugin's
// needs from the second privilege on, so one wrong privilege, or a
// single one, passes (CVE-2026-33997, fixed in docker v29.3.1, moby v2).
// Before a pull, and before disabling a plugin to upgrade it, Prepare asks
// a Privileger Backend (moby's Manager is one) what the remote requires;
// after each pull and upgrade it computes what the installed config
// requires, as the Manager does. Any difference fails the task with the
// permanent ErrIncorrectPrivileges: nothing installed, the running version
// left in service, or, when only the upgraded config shows it, the plugin
// left disabled.
//
// # Restart safety
//
// swarmkit's agent leaves when its node stops, for "docker swarm leave" and
// for a daemon shutdown alike, and so calls Remove on every task's
// Controller; upstream's then removes the plugin, and after a restart the
// task fails and a new one pulls the plugin again, with a new ID. What
// survives a restart therefore depends on the daemon:
//
//   - A daemon that wraps its node's executor with RestartSafe(e, backend,
//     dataRoot) each time it starts the swarm node, and calls
//     ShuttingDown(dataRoot) just before it stops the node for a shutdown
//     (never for a leave), keeps every plugin its services installed:
//     installed, enabled (moby's Manager restores it), with its ID and
//     settings. The first complete set of assignments after the restart
//     gives each one back to a task of its service on the node that the
//     managers are not removing, which resumes without a pull, or removes
//     it if there is none: the service was deleted while the daemon was
//     down, the node left, or its swarm state was wiped and it joined as a
//     new node (whose new tasks then pull again). Until then, another
//     service's Prepare for the same plugin name waits. The record of kept
//     plugins is dataRoot/swarm-plugins-kept.json, outside the swarm state.
//   - A daemon that does not (upstream's) loses its plugin services'
//     plugins at every stop, as before. So does any stop not preceded by
//     ShuttingDown.
//   - Reference counts never survive: they live in the Manager's memory.
//     Each task takes its reference again when it binds after the restart.
//
// For moby v28.3.0 (and moby v2) the daemon side is a patch of two
// functions, daemon/cluster/noderunner.go's (*nodeRunner).start and
// daemon/cluster/cluster.go's (*Cluster).Cleanup; see the README.
//
// # Differences from upstream
//
// Exported identifiers and error words are upstream's; these behaviours
// differ:
//
//   - Bad input (nil task, another runtime, no or undecodable payload, bad
//     remote) is an error classified invalid argument, never a panic.
//   - A resumed task binds to its plugin by name; upstream calls Get("").
//   - With RestartSafe and ShuttingDown, a daemon restart keeps the
//     plugins; upstream removes and re-pulls them.
//   - Exactly one reference per task, released at most once; upstream
//     leaks or double-releases on retried or failed steps.
//   - A Disabled spec works against the real Manager (forced disable, own
//     references only); upstream's plain Disable always fails there.
//   - Wait returns at once when the event stream closes (upstream spins at
//     full CPU) and when Close is called.
//   - Transient failures are exec.MakeTemporary, so swarmkit retries instead
//     of rejecting the task; causes stay reachable with errors.Is/As; errors
//     are classified with github.com/containerd/errdefs.
//   - Close is final: afterwards every method returns exec.ErrControllerClosed.
//   - A remote pinned by digest that is already installed is left running;
//     a failed upgrade, set or disable re-enables the plugin it disabled.
//   - A spec without a Name whose remote is pinned by digest names the
//     plugin by the remote's repository and tag, without the digest, which
//     the Manager could not look up; upstream never finds what it pulled.
//   - A step cut short by its context (swarmkit cancels a Prepare when it
//     raises a task's desired state) is retried, whatever the Backend
//     wrapped around the context's error; upstream rejects the task unless
//     the Backend returned ctx.Err() as is.
//   - Env changes apply the settable entries (see Env); upstream drops them.
//   - Ownership is upstream's rule, SwarmServiceID == ServiceID; in a swarm
//     every plugin task has its service's ID, so a plugin a person
//     installed is never taken over. An unclassified, permanent error from
//     Get in Prepare means "not installed", as upstream; classified and
//     temporary ones stay errors.
//   - Registry credentials (WithRegistryAuth), the enable timeout, progress
//     output and the logger are options of New.
//   - Each step logs at debug, each state change at info, with the task,
//     service, plugin name and ID; credentials never reach a log or an error.
package plugin
