package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/seed-e85c93d5/plugin/internal/errs"
	"github.com/seed-e85c93d5/plugin/internal/health"
	"github.com/seed-e85c93d5/plugin/internal/logging"
	"github.com/seed-e85c93d5/plugin/internal/pluginspec"
	"github.com/seed-e85c93d5/plugin/internal/privileges"
	"github.com/seed-e85c93d5/plugin/internal/refs"
	"github.com/seed-e85c93d5/plugin/internal/restart"
	"github.com/seed-e85c93d5/plugin/internal/update"
	"github.com/seed-e85c93d5/plugin/internal/watch"
	"github.com/seed-e85c93d5/plugin/remotedigest"
)

// RuntimeKind is the Kind of the generic runtime spec that carries a
// runtime.PluginSpec, as the Docker daemon encodes plugin services
// (swarm.RuntimePlugin).
const RuntimeKind = string(swarm.RuntimePlugin)

// DefaultEnableTimeout is how long Start lets the Backend wait for an
// enabled plugin to answer its activation, as upstream.
const DefaultEnableTimeout = 30 * time.Second

// Controller is the controller for the plugin backend.
// Plugins are managed as a singleton object with a desired state (different
// from containers). With the plugin controller instead of having a strict
// create->start->stop->remove task lifecycle like containers, we manage the
// desired state of the plugin and let the plugin manager do what it already
// does and monitor the plugin. We'll also end up with many tasks all
// pointing to the same plugin ID.
//
// A Controller serves one task. swarmkit's agent calls its methods (see the
// package documentation for the order); all methods are safe for concurrent
// use, including Remove and Close while a cancelled Prepare or Wait is still
// running on another goroutine. After Close, every method but Close returns
// exec.ErrControllerClosed.
type Controller struct {
	backend Backend
	d       *pluginspec.Task // the spec (Name defaulted) and parsed remote; shared, never modified
	taskID  string
	holder  string // the task's key in the holder table: its ID, or one of this Controller's own for a task without an ID
	service string
	opts    options
	guard   *restart.Guard  // set by a RestartSafe executor before swarmkit sees the Controller; nil otherwise
	asTask  *controllerTask // the Controller as the guard sees it

	// opMu serialises the steps that change the plugin or the task's
	// reference (Prepare, Start, Remove and Wait's binding), so a late
	// Prepare cannot acquire after Remove released.
	opMu sync.Mutex

	mu        sync.Mutex // guards the fields below
	pluginID  string     // the plugin this task is bound to; "" until bound
	bound     *v2.Plugin // the object the task's reference is held on; nil until bound
	removing  bool       // Remove has begun: no step may bind or change the plugin
	removed   bool       // Remove is done
	closed    bool
	closedCh  chan struct{}    // closed by Close; ends a Wait in flight
	envWarned bool             // the spec's unsettable env keys have been logged
	readiness health.Readiness // Start's wait for the enabled plugin to answer
}

// Option configures a Controller made by New.
type Option func(*options)

type options struct {
	auth          func(ctx context.Context, ref reference.Named) (*registry.AuthConfig, error)
	enableTimeout time.Duration
	progress      io.Writer
	logger        *log.Entry
	hosts         docker.RegistryHosts
	health        HealthCheck
}

// HealthCheck is how Wait checks that a running plugin still answers: a
// probe every Interval, each given Timeout, and Wait fails the task after
// Threshold misses in a row. A zero Interval turns the check off. Start's
// readiness probe (after each enable, until the enable timeout) uses
// Timeout too.
type HealthCheck struct {
	Interval  time.Duration
	Timeout   time.Duration
	Threshold int
}

// DefaultHealthCheck is the check of a Controller without WithHealthCheck:
// loose enough never to take a healthy plugin out of service.
var DefaultHealthCheck = HealthCheck{Interval: 10 * time.Second, Timeout: 5 * time.Second, Threshold: 3}

// WithHealthCheck sets the liveness check of Wait (and the probe timeout of
// Start's readiness check); see HealthCheck. A Timeout or Threshold of 0
// keeps the default's; a zero Interval turns the liveness check off, but
// not Start's readiness check.
//
// What a probe asks: the plugin's handshake, Plugin.Activate, then for
// each interface type moby knows one cheap call of its protocol
// (VolumeDriver.Capabilities, NetworkDriver.GetCapabilities,
// IpamDriver.GetCapabilities, LogDriver.Capabilities; any HTTP answer
// counts), or CSI's Identity.Probe over gRPC for docker.csicontroller/1.0
// and docker.csinode/1.0. It goes to the socket the Manager gives the
// plugin, or through the Backend's PluginProber. A plugin without a socket
// address is not probed.
func WithHealthCheck(h HealthCheck) Option {
	return func(o *options) {
		if h.Timeout <= 0 {
			h.Timeout = DefaultHealthCheck.Timeout
		}
		if h.Threshold <= 0 {
			h.Threshold = DefaultHealthCheck.Threshold
		}
		if h.Interval < 0 {
			h.Interval = 0
		}
		o.health = h
	}
}

// WithRegistryAuth makes Prepare call fn for the reference it is about to
// pull or upgrade and pass the config fn returns to the Backend. A nil
// config (or no WithRegistryAuth at all) means anonymous access, as
// upstream: the Backend then gets an empty &registry.AuthConfig{}, never
// nil. An error from fn fails Prepare; it stays temporary when fn's
// error is (exec.IsTemporary, or a transient errdefs class).
//
// fn is called on the agent's goroutines, possibly for several tasks at
// once, so it must be safe for concurrent use. The package
// github.com/seed-e85c93d5/plugin/registryauth has ready-made functions
// (static credentials, a docker CLI config file with credential helpers, an
// encoded X-Registry-Auth value). The Controller never logs the config and
// never puts it in an error.
func WithRegistryAuth(fn func(ctx context.Context, ref reference.Named) (*registry.AuthConfig, error)) Option {
	return func(o *options) { o.auth = fn }
}

// WithRegistryHosts gives the registry hosts (mirrors, TLS, insecure
// registries: a daemon builds them from its registry configuration) that
// Prepare uses to ask which manifest a tag names now when the Backend is
// moby's *plugin.Manager (see ManifestResolver). Without it, Prepare asks
// as the Manager does without daemon settings: HTTPS, and plain HTTP for
// localhost and loopback addresses. Credentials still come from
// WithRegistryAuth.
func WithRegistryHosts(hosts docker.RegistryHosts) Option {
	return func(o *options) { o.hosts = hosts }
}

// WithEnableTimeout sets how long the Backend may wait for the plugin to
// activate when Start enables it (backend.PluginEnableConfig.Timeout, in
// whole seconds, rounded up). The default is DefaultEnableTimeout;
// d <= 0 keeps the default.
func WithEnableTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.enableTimeout = d
		}
	}
}

// WithProgress sends the Backend's pull and upgrade progress to w. The
// default discards it. Controllers of different tasks may write at the same
// time, so a w shared between them must be safe for concurrent use.
func WithProgress(w io.Writer) Option {
	return func(o *options) {
		if w != nil {
			o.progress = w
		}
	}
}

// WithLogger makes the Controller log through l instead of the logger of
// each call's context (swarmkit's agent logger, else log.G(ctx)); an Entry
// without a Logger silences it. Either way every line carries the task,
// service, plugin name and (once known) plugin ID.
func WithLogger(l *log.Entry) Option {
	return func(o *options) { o.logger = l }
}

// NewController returns a new cluster plugin controller for task t, which
// must carry a generic runtime of kind "plugin" whose payload is a
// runtime.PluginSpec. It is New(backend, t) with no options.
//
// Errors are classified invalid argument (cerrdefs.IsInvalidArgument). A
// nil task, another runtime, a payload that does not decode and a remote
// that is not a valid reference also match ErrInvalidSpec; a nil (or typed
// nil) backend does not, since the spec is not at fault. A Name that
// is not a valid reference is refused by the Backend at Prepare (an error
// classified invalid argument with moby's Manager), as upstream.
//
// Decoded payloads are cached (every task of a service carries the same
// one), so creating a Controller for a spec already seen costs no decoding.
func NewController(backend Backend, t *api.Task) (*Controller, error) {
	return New(backend, t)
}

// New returns a new cluster plugin controller for task t, configured by
// opts. See NewController for the errors.
func New(backend Backend, t *api.Task, opts ...Option) (*Controller, error) {
	if isNil(backend) {
		return nil, errNilBackend
	}
	d, err := pluginspec.Read(t)
	if err != nil {
		return nil, err
	}
	c := &Controller{
		backend:  backend,
		d:        d,
		taskID:   t.ID,
		holder:   refs.HolderKey(t.ID),
		service:  t.ServiceID,
		opts:     options{enableTimeout: DefaultEnableTimeout, progress: io.Discard, health: DefaultHealthCheck},
		closedCh: make(chan struct{}),
	}
	c.asTask = &controllerTask{c}
	for _, o := range opts {
		if o != nil {
			o(&c.opts)
		}
	}
	return c, nil
}

// log writes one line at level with the task's fields and extra, given as
// key, value pairs; nothing is built when the level is disabled, so the
// debug line of every step costs a level check in a daemon that logs at
// info (see package internal/logging).
func (p *Controller) log(ctx context.Context, level log.Level, msg string, extra ...string) {
	logging.Line(ctx, p.opts.logger, level, msg, p.logTask, extra...)
}

func (p *Controller) logTask() logging.Task {
	return logging.Task{ID: p.taskID, Service: p.service, Plugin: p.d.Display, PluginID: p.boundID()}
}

func (p *Controller) debug(ctx context.Context, msg string) {
	p.log(ctx, log.DebugLevel, msg)
}

// enter checks that the Controller may still act.
func (p *Controller) enter() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return exec.ErrControllerClosed
	case p.removing || p.removed:
		return ErrTaskRemoved
	}
	return nil
}

func (p *Controller) boundID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pluginID
}

// Update is the update phase from swarmkit. It has no effect: a plugin
// task's spec never changes in place, swarmkit replaces the task instead.
func (p *Controller) Update(ctx context.Context, t *api.Task) error {
	if err := p.enter(); err != nil {
		return err
	}
	p.debug(ctx, "Update")
	return nil
}

// Prepare is the prepare phase from swarmkit. It installs the plugin the
// spec names, or brings this service's installed plugin to the spec's
// remote and env, and takes the task's reference on it.
//
//   - No plugin of that name: Pull it with the spec's privileges and env,
//     owned by the task's service (plugin.WithSwarmService).
//   - A plugin of that name owned by another service, or by nobody (a person
//     installed it): fail with ErrPluginExists and leave it alone.
//   - This service's plugin: take the reference, then, only if something
//     changes (see "When a plugin is out of service" in the package doc),
//     Upgrade it to the remote and apply the env entries the plugin can
//     take (see below). Both need the plugin disabled: Prepare
//     force-disables it, makes the change, and enables it again at once if
//     it was enabled and the spec does not say Disabled (otherwise Start
//     enables it). When anything fails after the disable, a plugin that
//     was enabled is enabled again before Prepare returns the error.
//   - A spec that says Disabled while references other than this service's
//     tasks hold the plugin (a volume that uses the driver, say): fail with
//     the temporary ErrPluginInUse and change nothing, so that the plugin
//     is not torn from its users on every retry. Start disables it once
//     they let go.
//
// Env: only "KEY=VALUE" entries whose key the plugin's config declares with
// a settable value are set, and only when the Backend implements Setter
// (moby's Manager does), exactly the entries its Set accepts. Entries
// without "=", undeclared keys and unsettable keys are skipped (each key
// logged once at warn, never its value): the plugin stays in service with
// the env it has, as upstream, which ignores Env on an installed plugin.
//
// Prepare may be called again after an error (swarmkit retries temporary
// errors); the task still holds exactly one reference.
func (p *Controller) Prepare(ctx context.Context) (err error) {
	defer func() { err = stepError(ctx, err) }()
	if p.guard != nil {
		if err := p.guard.Settled(ctx, p.asTask); err != nil {
			return err
		}
	}
	held, err := p.begin(ctx)
	if err != nil {
		return err
	}
	defer p.end(held)
	p.debug(ctx, "Prepare")

	pl, err := p.bind(p.d.Spec.Name)
	if err == nil {
		return p.prepareExisting(ctx, pl)
	}
	if !errs.NotInstalled(err) {
		return err
	}

	auth, err := p.authFor(ctx)
	if err != nil {
		return err
	}
	if err := p.checkRemoteGrant(ctx, auth); err != nil {
		return err
	}
	// A copy: docker v28's Manager sorts the grant it is given in place.
	privs := slices.Clone(p.d.Granted)
	if err := p.backend.Pull(ctx, p.d.Remote, p.d.Spec.Name, nil, auth, privs, p.opts.progress,
		plugin.WithSwarmService(p.service), plugin.WithEnv(p.d.Spec.Env)); err != nil {
		if cerrdefs.IsConflict(err) || cerrdefs.IsAlreadyExists(err) {
			// Installed between our Get and Pull (by another task of this
			// service, or by someone else): retry, and the next Prepare
			// takes the existing-plugin path with its ownership check.
			return exec.MakeTemporary(classify(fmt.Sprintf("error pulling plugin %s", p.d.Display), err))
		}
		if refused := privileges.Refused(err, p.d.Display, p.d.Familiar); refused != nil {
			return refused
		}
		return classify(fmt.Sprintf("error pulling plugin %s from %s", p.d.Display, p.d.Familiar), err)
	}
	pl, err = p.bind(p.d.Spec.Name)
	if err != nil {
		if errs.NotInstalled(err) {
			// Removed between our Pull and bind, or a Backend that cannot
			// find what it just installed: say so, and pull again.
			return exec.MakeTemporary(fmt.Errorf("plugin %s not found right after a successful pull: %w", p.d.Display, err))
		}
		return err
	}
	if err := p.checkInstalledGrant(pl); err != nil {
		// The Backend installed what the grant does not cover (docker
		// v28's Manager does, CVE-2026-33997): never enable it.
		p.unpull(ctx, pl, err)
		return err
	}
	p.log(ctx, log.InfoLevel, "plugin pulled", "remote", p.d.Familiar)
	return nil
}

// checkRemoteGrant checks the spec's grant against what the remote's
// plugin requires, as a Privileger Backend tells (privileges.Remote: nil
// without one, or when it tells none, moby's answer to a failed fetch;
// the check of the installed config after the pull or upgrade decides).
func (p *Controller) checkRemoteGrant(ctx context.Context, auth *registry.AuthConfig) error {
	pr, ok := p.backend.(Privileger)
	if !ok {
		return nil
	}
	return privileges.Remote(ctx, pr.Privileges, p.d.Remote, auth, p.d.Granted, p.d.Display, p.log)
}

// checkInstalledGrant checks the spec's grant against what pl's installed
// config requires.
func (p *Controller) checkInstalledGrant(pl *v2.Plugin) error {
	return privileges.Check(privileges.Required(pl.PluginObj.Config), p.d.Granted, func() string {
		return fmt.Sprintf("plugin %s as installed from %s", p.d.Display, pl.PluginObj.PluginReference)
	})
}

// unpull removes pl, which this Prepare just pulled and bound, because its
// config requires what the grant does not cover (why). It runs under the
// plugin's lock, so no other task of the service has bound to pl. If the
// removal fails, the plugin stays installed and disabled, and the task's
// Remove tries again.
func (p *Controller) unpull(ctx context.Context, pl *v2.Plugin, why error) {
	refs.Holders.Lock()
	refs.Holders.ReleaseLocked(pl, p.holder)
	refs.Holders.Unlock()
	p.mu.Lock()
	p.pluginID, p.bound = "", nil
	p.mu.Unlock()
	if err := p.backend.Remove(pl.GetID(), &backend.PluginRmConfig{ForceRemove: true}); err != nil && !cerrdefs.IsNotFound(err) {
		p.log(ctx, log.ErrorLevel, "plugin refused for its privileges, and it could not be removed again; it stays disabled", "reason", why.Error(), "error", err.Error())
		return
	}
	p.log(ctx, log.ErrorLevel, "plugin refused for its privileges and removed again", "reason", why.Error())
}

// prepareExisting handles Prepare for this service's installed plugin, to
// which the task is already bound: package internal/update decides
// whether anything changes and makes the change.
func (p *Controller) prepareExisting(ctx context.Context, pl *v2.Plugin) error {
	others := p.otherReferences(pl)
	if p.d.Spec.Disabled && pl.IsEnabled() && others > 0 {
		return p.inUse(others, "match the spec")
	}
	c := &update.Change{
		Backend:        p.backend,
		Resolve:        remotedigest.For(p.backend, p.opts.hosts),
		Task:           p.d,
		Auth:           p.authFor,
		CheckRemote:    p.checkRemoteGrant,
		CheckInstalled: p.checkInstalledGrant,
		Progress:       p.opts.progress,
		EnableTimeout:  p.enableTimeoutSeconds(),
		Others:         others,
		EnvSkipped:     p.envSkipped,
		Log:            p.log,
	}
	if s, ok := p.backend.(Setter); ok {
		c.Set = s.Set
	}
	return c.Apply(ctx, pl)
}

// envSkipped logs, once per task, the keys of the spec's Env the plugin
// cannot set.
func (p *Controller) envSkipped(ctx context.Context, keys []string) {
	p.mu.Lock()
	warn := !p.envWarned
	p.envWarned = true
	p.mu.Unlock()
	if warn {
		p.log(ctx, log.WarnLevel, "ignoring env entries the plugin cannot set: no KEY=VALUE form, or a key its config does not declare settable", "env.keys", fmt.Sprint(keys))
	}
}

// otherReferences counts the references on pl that are not held by this
// service's tasks on the node: volumes, containers logging through it,
// networks.
func (p *Controller) otherReferences(pl *v2.Plugin) int {
	return max(pl.GetRefCount()-refs.Holders.Count(pl), 0)
}

func (p *Controller) inUse(others int, why string) error {
	err := withDetail(ErrPluginInUse, fmt.Sprintf("%s has %d reference(s) besides service %s's tasks", p.d.Display, others, p.service), nil)
	return exec.MakeTemporary(fmt.Errorf("cannot disable plugin %s to %s: %w", p.d.Display, why, err))
}

// authFor asks the WithRegistryAuth function for the remote's credentials.
func (p *Controller) authFor(ctx context.Context) (*registry.AuthConfig, error) {
	if p.opts.auth == nil {
		return &registry.AuthConfig{}, nil
	}
	cfg, err := p.opts.auth(ctx, p.d.Remote)
	if err != nil {
		return nil, classify(fmt.Sprintf("error getting registry credentials for %s", reference.Domain(p.d.Remote)), err)
	}
	if cfg == nil {
		cfg = &registry.AuthConfig{}
	}
	return cfg, nil
}

// lookup gets a plugin from the Backend by name or ID. A missing plugin is
// the Backend's own error, classified not found, returned as is: callers
// take it as an answer (Prepare pulls, Wait reports a removal, Remove is
// done), so it is not worth wrapping. Other errors are classified and keep
// their cause; a Backend answer without plugin, error or ID is an internal
// error.
func (p *Controller) lookup(nameOrID string) (*v2.Plugin, error) {
	pl, err := p.backend.Get(nameOrID)
	switch {
	case cerrdefs.IsNotFound(err):
		return nil, err
	case err != nil:
		wrapped := classify(fmt.Sprintf("error looking up plugin %s", p.d.Display), err)
		if !hasClass(err) && !isTransient(err) {
			return nil, errs.Unclassified(wrapped)
		}
		return nil, wrapped
	case pl == nil:
		return nil, withDetail(errBackend, "Get returned neither a plugin nor an error", nil)
	case pl.GetID() == "":
		return nil, withDetail(errBackend, "plugin has an empty ID", nil)
	}
	return pl, nil
}

// owns reports whether the task's service owns pl: upstream's rule, the
// plugin's SwarmServiceID is the task's ServiceID. swarmkit gives every
// task of a plugin service its service's ID, so a plugin a person installed
// (no SwarmServiceID) is never a swarm task's; only a task built by hand
// without a ServiceID, as in upstream's own tests, owns such a plugin.
func (p *Controller) owns(pl *v2.Plugin) bool {
	return pl.SwarmServiceID == p.service
}

// bind resolves the task's plugin by name or ID, checks that this task's
// service owns it, records it as the task's plugin and takes the task's
// reference on it unless the task already holds one. Callers hold opMu and
// have checked enter, so no bind happens once Remove has begun.
func (p *Controller) bind(nameOrID string) (*v2.Plugin, error) {
	refs.Holders.Lock()
	defer refs.Holders.Unlock()
	pl, err := p.lookup(nameOrID)
	if err != nil {
		return nil, err
	}
	if !p.owns(pl) {
		return nil, withDetail(ErrPluginExists, p.d.Display, nil)
	}
	refs.Holders.AcquireLocked(pl, p.holder)
	p.mu.Lock()
	p.pluginID, p.bound = pl.GetID(), pl
	p.mu.Unlock()
	return pl, nil
}

// current returns the task's plugin, binding to it first when the task was
// resumed on a new Controller (swarmkit calls Start or Wait without Prepare
// after an agent restart).
func (p *Controller) current() (*v2.Plugin, error) {
	if id := p.boundID(); id != "" {
		return p.bind(id)
	}
	return p.bind(p.d.Spec.Name)
}

// begin starts a step that may bind or change the plugin: it takes opMu
// and the plugin's lock (giving up when ctx ends) and checks that the
// Controller may still act. end(held) releases both.
func (p *Controller) begin(ctx context.Context) (refs.Held, error) {
	p.opMu.Lock()
	if err := p.enter(); err != nil {
		p.opMu.Unlock()
		return refs.Held{}, err
	}
	held, err := refs.Locks.Lock(ctx, p.d.Key)
	if err != nil {
		p.opMu.Unlock()
		return refs.Held{}, err
	}
	return held, nil
}

// end ends a step begin began.
func (p *Controller) end(held refs.Held) {
	held.Unlock()
	p.opMu.Unlock()
}

// Start is the start phase from swarmkit. It brings the plugin to the
// spec's state: enabled (waiting up to the enable timeout for it to
// activate), or disabled when the spec says Disabled.
//
// Disabling is forced, because the Manager counts this service's own task
// references as users; it is refused with a temporary ErrPluginInUse while
// references other than this service's tasks hold the plugin.
func (p *Controller) Start(ctx context.Context) (err error) {
	defer func() { err = stepError(ctx, err) }()
	held, err := p.begin(ctx)
	if err != nil {
		return err
	}
	defer p.end(held)
	p.debug(ctx, "Start")

	pl, err := p.current()
	if err != nil {
		return err
	}
	if p.d.Spec.Disabled {
		if !pl.IsEnabled() {
			return nil
		}
		if others := p.otherReferences(pl); others > 0 {
			return p.inUse(others, "match the spec")
		}
		return update.ForceDisable(ctx, p.backend, pl, 0, p.d.Display, p.log)
	}
	if pl.IsEnabled() && health.NotAnswering.Take(pl.GetID()) {
		// A task's Wait found it hung: restart it if it still does not
		// answer, and only then.
		if err := p.probe(ctx, pl); err != nil && !errors.Is(err, health.ErrNotProbed) {
			p.log(ctx, log.WarnLevel, "plugin does not answer; restarting it", "probe", p.probeName(pl), "error", err.Error())
			if err := p.backend.Disable(pl.GetID(), &backend.PluginDisableConfig{ForceDisable: true}); err != nil && pl.IsEnabled() {
				health.NotAnswering.Mark(pl.GetID())
				return classify(fmt.Sprintf("cannot restart plugin %s, which does not answer", p.d.Display), err)
			}
		}
	}
	if !pl.IsEnabled() {
		if err := p.backend.Enable(pl.GetID(), &backend.PluginEnableConfig{Timeout: p.enableTimeoutSeconds()}); err != nil {
			if !pl.IsEnabled() {
				return classify(fmt.Sprintf("error enabling plugin %s", p.d.Display), err)
			}
			// enabled meanwhile, by another task of the service
		} else {
			p.log(ctx, log.InfoLevel, "plugin enabled")
		}
	}
	return p.ready(ctx, pl)
}

// ready returns nil once the enabled plugin pl answers its probe, a
// temporary ErrPluginNotAnswering while it may still be starting, and a
// permanent one once the enable timeout has passed since Start first found
// it not answering (package internal/health).
func (p *Controller) ready(ctx context.Context, pl *v2.Plugin) error {
	return p.readiness.Check(ctx, p.checker(), pl, p.d.Display, p.opts.enableTimeout)
}

// checker is how the Controller probes its plugin (package internal/health).
func (p *Controller) checker() health.Checker {
	c := health.Checker{Timeout: p.opts.health.Timeout, Closed: p.closedCh}
	if pr, ok := p.backend.(PluginProber); ok {
		c.Prober = pr.ProbePlugin
	}
	return c
}

func (p *Controller) probe(ctx context.Context, pl *v2.Plugin) error {
	return p.checker().Probe(ctx, pl)
}

func (p *Controller) probeName(pl *v2.Plugin) string { return p.checker().Name(pl) }

func (p *Controller) enableTimeoutSeconds() int {
	return int((p.opts.enableTimeout + time.Second - 1) / time.Second)
}

// Wait causes the task to wait until returned. It watches the plugin and
// returns:
//
//   - ErrMismatchedState at once if the plugin's state is not the spec's;
//   - ErrPluginEnabled or ErrPluginDisabled when the plugin changes to the
//     state opposite to the spec, ErrPluginRemoved when it is removed
//     (events that confirm the spec are ignored);
//   - ErrPluginNotAnswering when the plugin misses its health check the
//     threshold's number of times in a row (see WithHealthCheck);
//   - ctx.Err() when ctx ends, exec.ErrControllerClosed when Close is called;
//   - a temporary error if the Backend closes the event stream.
//
// Waiting costs no CPU between health checks: it blocks on the Backend's
// event channel and the check's ticker.
func (p *Controller) Wait(ctx context.Context) (err error) {
	defer func() { err = stepError(ctx, err) }()
	if err := p.enter(); err != nil {
		return err
	}
	p.debug(ctx, "Wait")

	id := p.boundID()
	if id == "" {
		if id, err = p.bindResumed(ctx); err != nil {
			return err
		}
	}
	events, cancel := watch.Subscribe(p.backend, id)
	if cancel != nil {
		defer cancel()
	}
	if events == nil {
		return withDetail(errBackend, "SubscribeEvents returned a nil channel", nil)
	}

	// Look at the plugin only once subscribed: any change after this point
	// arrives as an event, and one before it shows in the state (a plugin
	// removed in between is gone, not silently waited on).
	pl, err := p.lookup(id)
	if cerrdefs.IsNotFound(err) {
		return withDetail(ErrPluginRemoved, "", err)
	}
	if err != nil {
		return err
	}
	if !p.d.Spec.Disabled != pl.IsEnabled() {
		return ErrMismatchedState
	}

	var tick <-chan time.Time
	live := p.liveness(pl)
	if live != nil {
		t := time.NewTicker(p.opts.health.Interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.closedCh:
			return exec.ErrControllerClosed
		case <-tick:
			if err := live.Check(ctx, pl); err != nil {
				return err
			}
		case e, ok := <-events:
			if !ok {
				return exec.MakeTemporary(errEventsClosed)
			}
			switch e.(type) {
			case plugin.EventEnable:
				if p.d.Spec.Disabled {
					return ErrPluginEnabled
				}
			case plugin.EventRemove:
				return ErrPluginRemoved
			case plugin.EventDisable:
				if !p.d.Spec.Disabled {
					return ErrPluginDisabled
				}
			}
			p.log(ctx, log.DebugLevel, "ignoring an event that matches the spec", "event", fmt.Sprintf("%T", e))
		}
	}
}

// bindResumed binds a task that Wait finds unbound, resumed on a new
// Controller after an agent restart, and takes its reference, unless
// Remove has begun; a task bound by Prepare or Start already holds it. It
// returns the plugin's ID. (Wait's rare paths are functions of their own,
// so that the goroutine of each of a node's many Waits needs no bigger
// stack.)
func (p *Controller) bindResumed(ctx context.Context) (string, error) {
	held, err := p.begin(ctx)
	if err != nil {
		return "", err
	}
	pl, err := p.current()
	p.end(held)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", withDetail(ErrPluginRemoved, "", err)
		}
		return "", err
	}
	return pl.GetID(), nil
}

// liveness returns Wait's health check of pl, or nil when there is none:
// the spec says Disabled, a zero Interval turned it off, or the plugin
// cannot be asked (see WithHealthCheck; it is trusted, as upstream trusts
// every plugin).
func (p *Controller) liveness(pl *v2.Plugin) *health.Liveness {
	checker := p.checker()
	if p.d.Spec.Disabled || p.opts.health.Interval <= 0 || !checker.CanProbe(pl) {
		return nil
	}
	return &health.Liveness{Checker: checker, Threshold: p.opts.health.Threshold, Name: p.d.Display, Log: p.log}
}

// ContainerStatus implements swarmkit's exec.ContainerStatuser: the task's
// runtime status carries the ID of the plugin the task is bound to as its
// container ID (none before it is bound), so that "docker inspect TASK"
// shows which plugin each node runs. swarmkit's exec.Do calls it after
// each step; it makes no Backend call.
func (p *Controller) ContainerStatus(context.Context) (*api.ContainerStatus, error) {
	id := p.boundID()
	if id == "" {
		return nil, nil
	}
	return &api.ContainerStatus{ContainerID: id}, nil
}

// Shutdown is the shutdown phase from swarmkit. It has no effect: the plugin
// is shared with the service's other tasks and outlives this one.
func (p *Controller) Shutdown(ctx context.Context) error {
	return p.stop(ctx, "Shutdown")
}

// Terminate is the terminate phase from swarmkit. It has no effect, like
// Shutdown.
func (p *Controller) Terminate(ctx context.Context) error {
	return p.stop(ctx, "Terminate")
}

// stop is Shutdown and Terminate: nothing to do, and a removed task may
// still be stopped.
func (p *Controller) stop(ctx context.Context, phase string) error {
	if err := p.enter(); err != nil && !errors.Is(err, ErrTaskRemoved) {
		return err
	}
	p.debug(ctx, phase)
	return nil
}

// Remove is the remove phase from swarmkit. It releases the task's reference
// (at most once, however often Remove is called) and removes the plugin when
// no reference remains, forcing the removal since the plugin may be enabled.
// It finds the plugin from the task's spec when the task was never bound on
// this Controller, and never removes a plugin its service does not own. A
// plugin that is already gone is success.
//
// From the moment Remove begins, no other step binds the task to the plugin
// or changes it: they return ErrTaskRemoved.
//
// On a node whose executor is RestartSafe, after ShuttingDown, Remove
// releases the reference but keeps the plugin installed for the node's
// restart, and records it; see RestartSafe.
func (p *Controller) Remove(ctx context.Context) (err error) {
	defer func() { err = stepError(ctx, err) }()
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	closed, removed := p.closed, p.removed
	if !closed {
		p.removing = true
	}
	id, bound := p.pluginID, p.bound
	p.mu.Unlock()
	if closed {
		return exec.ErrControllerClosed
	}
	if removed {
		return nil
	}
	p.debug(ctx, "Remove")
	// Remove waits for the plugin's lock whatever ctx says (the lock sees
	// only a context's Done): swarmkit calls it once, best effort, with a
	// context a leave cancels early, and nothing retries it, so giving up
	// here would leave the plugin behind.
	// The holder is another step of the plugin, which ends when its own
	// context does.
	held, err := refs.Locks.Lock(context.Background(), p.d.Key)
	if err != nil {
		return err
	}
	defer held.Unlock()

	pl, err := p.release(ctx, id, bound)
	if err != nil || pl == nil {
		return err
	}
	if p.guard != nil && p.guard.Keep(ctx, p.asTask, pl) {
		p.markRemoved()
		p.log(ctx, log.InfoLevel, "plugin kept for the node's restart")
		return nil
	}
	// The plugin's lock, held until the removal is done, keeps this
	// service's other tasks on the node from binding to it meanwhile.
	if err := p.backend.Remove(pl.GetID(), &backend.PluginRmConfig{ForceRemove: true}); err != nil && !cerrdefs.IsNotFound(err) {
		// The reference is released; a retried Remove must not release
		// again, only retry the removal.
		p.mu.Lock()
		p.pluginID, p.bound = pl.GetID(), nil
		p.mu.Unlock()
		return classify(fmt.Sprintf("error removing plugin %s", p.d.Display), err)
	}
	p.markRemoved()
	p.log(ctx, log.InfoLevel, "plugin removed")
	return nil
}

// release drops the task's reference and returns the plugin if it is this
// service's and no reference remains, so Remove should remove it; nil
// otherwise, with the task marked removed.
func (p *Controller) release(ctx context.Context, id string, bound *v2.Plugin) (*v2.Plugin, error) {
	refs.Holders.Lock()
	defer refs.Holders.Unlock()
	nameOrID := id
	if nameOrID == "" {
		nameOrID = p.d.Spec.Name
	}
	pl, err := p.lookup(nameOrID)
	if cerrdefs.IsNotFound(err) {
		refs.Holders.ForgetLocked(bound, p.holder)
		p.markRemoved()
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !p.owns(pl) || (id != "" && pl.GetID() != id) {
		// Not ours (any more): someone else's plugin now has the name.
		refs.Holders.ForgetLocked(bound, p.holder)
		p.markRemoved()
		p.debug(ctx, "plugin is not this service's; leaving it alone")
		return nil, nil
	}
	if bound != nil && bound != pl {
		// The Backend now returns another object for the plugin (a
		// daemon restart in between, say): the old one's count is moot.
		refs.Holders.ForgetLocked(bound, p.holder)
	}
	refs.Holders.ReleaseLocked(pl, p.holder)
	if n := pl.GetRefCount(); n > 0 {
		p.markRemoved()
		p.log(ctx, log.DebugLevel, "plugin still in use; keeping it", "references", strconv.Itoa(n))
		return nil, nil
	}
	return pl, nil
}

func (p *Controller) markRemoved() {
	p.mu.Lock()
	p.removed = true
	p.bound = nil
	p.mu.Unlock()
	if p.guard != nil {
		p.guard.Forget(p.asTask)
	}
}

// Close is the close phase from swarmkit. It is idempotent and returns nil;
// afterwards every other method returns exec.ErrControllerClosed, and a Wait
// in flight returns it too. Close does not release the task's reference:
// that is Remove's job, which swarmkit calls before Close.
func (p *Controller) Close() error {
	p.mu.Lock()
	first := !p.closed
	if first {
		p.closed = true
		close(p.closedCh)
	}
	p.mu.Unlock()
	if first && p.guard != nil {
		p.guard.Forget(p.asTask)
	}
	return nil
}
