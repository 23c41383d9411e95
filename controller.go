package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	swarmlog "github.com/moby/swarmkit/v2/log"
	"github.com/seed-e85c93d5/plugin/internal/pluginspec"
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
	d       *decodedSpec // the spec (Name defaulted) and parsed remote; shared, never modified
	taskID  string
	service string
	opts    options
	lock    *sync.Mutex // the plugin's stripe of pluginLocks

	// opMu serialises the steps that change the plugin or the task's
	// reference (Prepare, Start, Remove and Wait's binding), so a late
	// Prepare cannot acquire after Remove released.
	opMu sync.Mutex

	mu       sync.Mutex // guards the fields below
	pluginID string     // the plugin this task is bound to; "" until bound
	removed  bool
	closed   bool
	closedCh chan struct{} // closed by Close; ends a Wait in flight
}

// Option configures a Controller made by New.
type Option func(*options)

type options struct {
	auth          func(ctx context.Context, ref reference.Named) (*registry.AuthConfig, error)
	enableTimeout time.Duration
	progress      io.Writer
	logger        *log.Entry
}

// WithRegistryAuth makes Prepare call fn for the reference it is about to
// pull or upgrade and pass the config fn returns to the Backend. A nil
// config (or no WithRegistryAuth at all) means anonymous access, as
// upstream. An error from fn fails Prepare; it stays temporary when fn's
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
// Errors are classified invalid argument (cerrdefs.IsInvalidArgument) and
// match ErrInvalidSpec: a nil backend or task, another runtime, a payload
// that does not decode, a remote that is not a valid reference. A Name that
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
	if backend == nil {
		return nil, withDetail(ErrInvalidSpec, "nil backend", nil)
	}
	d, err := readSpec(t)
	if err != nil {
		return nil, err
	}
	c := &Controller{
		backend:  backend,
		d:        d,
		taskID:   t.ID,
		service:  t.ServiceID,
		opts:     options{enableTimeout: DefaultEnableTimeout, progress: io.Discard},
		closedCh: make(chan struct{}),
		lock:     pluginLock(d.spec.Name),
	}
	for _, o := range opts {
		if o != nil {
			o(&c.opts)
		}
	}
	return c, nil
}

// readSpec decodes and validates the plugin spec a task carries and parses
// its remote; it defaults Name to the remote, as upstream's Prepare does.
func readSpec(t *api.Task) (*decodedSpec, error) {
	if t == nil {
		return nil, withDetail(ErrInvalidSpec, "nil task", nil)
	}
	generic := t.Spec.GetGeneric()
	if generic == nil {
		return nil, withDetail(ErrInvalidSpec, fmt.Sprintf("task %s: runtime %s is not a generic plugin runtime", t.ID, runtimeName(t.Spec.Runtime)), nil)
	}
	if !strings.EqualFold(generic.Kind, RuntimeKind) {
		return nil, withDetail(ErrInvalidSpec, fmt.Sprintf("task %s: generic runtime kind %q is not %q", t.ID, generic.Kind, RuntimeKind), nil)
	}
	if generic.Payload == nil {
		return nil, withDetail(ErrInvalidSpec, fmt.Sprintf("task %s: generic runtime has no payload", t.ID), nil)
	}
	if d, ok := specs.Get(generic.Payload.Value); ok {
		return d, nil
	}
	decoded, err := pluginspec.Decode(generic.Payload.Value)
	if err != nil {
		return nil, withDetail(ErrInvalidSpec, "error reading plugin spec", err)
	}
	spec := *decoded
	remote, err := reference.ParseNormalizedNamed(spec.Remote)
	if err != nil {
		return nil, withDetail(ErrInvalidSpec, fmt.Sprintf("error parsing remote reference %q", spec.Remote), err)
	}
	if spec.Name == "" {
		spec.Name = remote.String()
	}
	// A bad Name is left to the Backend, which refuses it (invalid
	// argument) at Pull, as upstream.
	d := &decodedSpec{spec: spec, remote: remote, familiar: reference.FamiliarString(remote)}
	specs.Put(generic.Payload.Value, d)
	return d, nil
}

// specs caches decoded payloads: every task of a service on a node (one per
// restart, per node, per rollback) carries the same payload, so it is
// decoded and parsed once. Entries are never modified after they are
// stored; the Controller only reads its spec.
var specs pluginspec.Cache[*decodedSpec]

type decodedSpec struct {
	spec   runtime.PluginSpec
	remote reference.Named
	// familiar is remote as users write it ("vieux/sshfs:latest"), for
	// log lines and errors.
	familiar string
}

func runtimeName(r any) string {
	if r == nil || reflect.ValueOf(r).IsNil() {
		return "<none>"
	}
	return fmt.Sprintf("%T", r)
}

// log writes one line at level with the task's fields and extra, given as
// key, value pairs. It builds nothing when the level is disabled (the
// values are boxed only once the line is known to be written), so the
// debug line of every step costs a level check in a daemon that logs at
// info.
func (p *Controller) log(ctx context.Context, level log.Level, msg string, extra ...string) {
	l := p.opts.logger
	if l == nil {
		l = contextLogger(ctx)
	}
	if l.Logger == nil || !l.Logger.IsLevelEnabled(level) {
		return
	}
	fields := make(log.Fields, len(l.Data)+5+len(extra)/2)
	for k, v := range l.Data {
		fields[k] = v
	}
	fields["controller"] = "plugin"
	fields["task"] = p.taskID
	fields["service"] = p.service
	fields["plugin"] = p.d.spec.Name
	if id := p.boundID(); id != "" {
		fields["plugin.id"] = id
	}
	for i := 0; i+1 < len(extra); i += 2 {
		fields[extra[i]] = extra[i+1]
	}
	// One Entry with every field, rather than WithFields' copies of copies.
	e := &log.Entry{Logger: l.Logger, Data: fields, Context: l.Context}
	if e.Context == nil {
		e.Context = ctx
	}
	e.Log(level, msg)
}

// contextLogger returns the logger ctx carries. swarmkit's agent attaches
// its per-task logger (fields task.id, service.id, module) with its own
// log package, whose context key github.com/containerd/log does not see, so
// that one comes first; then containerd/log's (moby's daemon), whose G
// falls back to its standard logger.
func contextLogger(ctx context.Context) *log.Entry {
	if l := swarmlog.G(ctx); l != swarmlog.L {
		return l
	}
	return log.G(ctx)
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
	case p.removed:
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
// remote, and takes the task's reference on it.
//
//   - No plugin of that name: Pull it with the spec's privileges and env,
//     owned by the task's service (plugin.WithSwarmService).
//   - A plugin of that name owned by another service, or by nobody (a person
//     installed it): fail with ErrPluginExists and leave it alone.
//   - This service's plugin: take the reference, then (unless the remote is
//     pinned by digest and already installed) disable it if enabled and
//     Upgrade it; apply the spec's Env when the Backend is a Setter. If the
//     upgrade fails, a plugin that was enabled is enabled again.
//
// Prepare may be called again after an error (swarmkit retries temporary
// errors); the task still holds exactly one reference.
func (p *Controller) Prepare(ctx context.Context) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if err := p.enter(); err != nil {
		return err
	}
	p.lock.Lock()
	defer p.lock.Unlock()
	p.debug(ctx, "Prepare")

	pl, err := p.bind(p.d.spec.Name)
	if err == nil {
		return p.prepareExisting(ctx, pl)
	}
	if !cerrdefs.IsNotFound(err) {
		return err
	}

	auth, err := p.authFor(ctx)
	if err != nil {
		return err
	}
	privs := convertPrivileges(p.d.spec.Privileges)
	if err := p.backend.Pull(ctx, p.d.remote, p.d.spec.Name, nil, auth, privs, p.opts.progress,
		plugin.WithSwarmService(p.service), plugin.WithEnv(p.d.spec.Env)); err != nil {
		if cerrdefs.IsConflict(err) || cerrdefs.IsAlreadyExists(err) {
			// Installed between our Get and Pull (by another task of this
			// service, or by someone else): retry, and the next Prepare
			// takes the existing-plugin path with its ownership check.
			return exec.MakeTemporary(classify(fmt.Sprintf("error pulling plugin %s", p.d.spec.Name), err))
		}
		return classify(fmt.Sprintf("error pulling plugin %s from %s", p.d.spec.Name, p.d.familiar), err)
	}
	if _, err := p.bind(p.d.spec.Name); err != nil {
		if cerrdefs.IsNotFound(err) {
			// Removed between our Pull and bind: pull again.
			return exec.MakeTemporary(err)
		}
		return err
	}
	p.log(ctx, log.InfoLevel, "plugin pulled", "remote", p.d.familiar)
	return nil
}

// prepareExisting handles Prepare for this service's installed plugin, to
// which the task is already bound.
func (p *Controller) prepareExisting(ctx context.Context, pl *v2.Plugin) error {
	if _, pinned := p.d.remote.(reference.Canonical); pinned && pl.PluginObj.PluginReference == p.d.remote.String() {
		missing := missingEnv(pl.PluginObj.Settings.Env, p.d.spec.Env)
		if _, ok := p.backend.(Setter); !ok || len(missing) == 0 {
			p.debug(ctx, "plugin already at the pinned digest; nothing to do")
			return nil
		}
		// Only the env differs: it can be set once the plugin is disabled.
		if err := p.disableForChange(ctx, pl, "change its settings"); err != nil {
			return err
		}
		return p.applyEnv(ctx, pl.GetID(), missing)
	}

	wasEnabled := pl.IsEnabled()
	if err := p.disableForChange(ctx, pl, "upgrade it"); err != nil {
		return err
	}
	auth, err := p.authFor(ctx)
	if err == nil {
		err = p.backend.Upgrade(ctx, p.d.remote, p.d.spec.Name, nil, auth, convertPrivileges(p.d.spec.Privileges), p.opts.progress)
		if err != nil {
			err = classify(fmt.Sprintf("error upgrading plugin %s to %s", p.d.spec.Name, p.d.familiar), err)
		}
	}
	if err != nil {
		if wasEnabled {
			p.reenable(ctx, pl.GetID())
		}
		return err
	}
	p.log(ctx, log.InfoLevel, "plugin upgraded", "remote", p.d.familiar)
	if _, ok := p.backend.(Setter); ok {
		if missing := missingEnv(pl.PluginObj.Settings.Env, p.d.spec.Env); len(missing) > 0 {
			return p.applyEnv(ctx, pl.GetID(), missing)
		}
	}
	return nil
}

// disableForChange disables an enabled plugin so that it can be upgraded,
// reconfigured or match a Disabled spec. The Manager refuses a plain
// Disable while any reference exists, and this service's own tasks hold
// references, so a plain Disable could never succeed; the disable is forced,
// which is safe exactly when no one else (a volume, a network, a log
// driver) uses the plugin. Otherwise it fails with a temporary
// ErrPluginInUse.
func (p *Controller) disableForChange(ctx context.Context, pl *v2.Plugin, why string) error {
	if !pl.IsEnabled() {
		return nil
	}
	id := pl.GetID()
	if others := pl.GetRefCount() - holders.holders(p.backend, id); others > 0 {
		err := withDetail(ErrPluginInUse, fmt.Sprintf("%s has %d reference(s) besides service %s's tasks", p.d.spec.Name, others, p.service), nil)
		return exec.MakeTemporary(fmt.Errorf("cannot disable plugin %s to %s: %w", p.d.spec.Name, why, err))
	}
	if err := p.backend.Disable(id, &backend.PluginDisableConfig{ForceDisable: true}); err != nil {
		if !pl.IsEnabled() {
			return nil // someone else disabled it meanwhile
		}
		return classify(fmt.Sprintf("cannot disable plugin %s to %s", p.d.spec.Name, why), err)
	}
	p.log(ctx, log.InfoLevel, "plugin disabled")
	return nil
}

// reenable restores a plugin that Prepare disabled before a failed upgrade.
func (p *Controller) reenable(ctx context.Context, id string) {
	err := p.backend.Enable(id, &backend.PluginEnableConfig{Timeout: p.enableTimeoutSeconds()})
	if err != nil {
		p.log(ctx, log.WarnLevel, "could not re-enable plugin after a failed upgrade", "error", err.Error())
		return
	}
	p.log(ctx, log.InfoLevel, "plugin re-enabled after a failed upgrade")
}

func (p *Controller) applyEnv(ctx context.Context, id string, env []string) error {
	if err := p.backend.(Setter).Set(id, env); err != nil {
		return classify(fmt.Sprintf("error setting env of plugin %s", p.d.spec.Name), err)
	}
	p.log(ctx, log.InfoLevel, "plugin env updated", "env.keys", fmt.Sprint(envKeys(env)))
	return nil
}

// authFor asks the WithRegistryAuth function for the remote's credentials.
func (p *Controller) authFor(ctx context.Context) (*registry.AuthConfig, error) {
	if p.opts.auth == nil {
		return &registry.AuthConfig{}, nil
	}
	cfg, err := p.opts.auth(ctx, p.d.remote)
	if err != nil {
		return nil, classify(fmt.Sprintf("error getting registry credentials for %s", reference.Domain(p.d.remote)), err)
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
		return nil, classify(fmt.Sprintf("error looking up plugin %s", p.d.spec.Name), err)
	case pl == nil:
		return nil, withDetail(errBackend, "Get returned neither a plugin nor an error", nil)
	case pl.GetID() == "":
		return nil, withDetail(errBackend, "plugin has an empty ID", nil)
	}
	return pl, nil
}

// owns reports whether the task's service owns pl. A plugin without an
// owning service (a person installed it) is never the task's, even for a
// task without a service.
func (p *Controller) owns(pl *v2.Plugin) bool {
	return p.service != "" && pl.SwarmServiceID == p.service
}

// bind resolves the task's plugin by name or ID, checks that this task's
// service owns it, records it as the task's plugin and takes the task's
// reference on it unless the task already holds one.
func (p *Controller) bind(nameOrID string) (*v2.Plugin, error) {
	holders.mu.Lock()
	defer holders.mu.Unlock()
	pl, err := p.lookup(nameOrID)
	if err != nil {
		return nil, err
	}
	if !p.owns(pl) {
		return nil, withDetail(ErrPluginExists, p.d.spec.Name, nil)
	}
	id := pl.GetID()
	holders.acquireLocked(p.backend, pl, p.taskID)
	p.mu.Lock()
	p.pluginID = id
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
	return p.bind(p.d.spec.Name)
}

// Start is the start phase from swarmkit. It brings the plugin to the
// spec's state: enabled (waiting up to the enable timeout for it to
// activate), or disabled when the spec says Disabled.
//
// Disabling is forced, because the Manager counts this service's own task
// references as users; it is refused with a temporary ErrPluginInUse while
// references other than this service's tasks hold the plugin.
func (p *Controller) Start(ctx context.Context) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if err := p.enter(); err != nil {
		return err
	}
	p.lock.Lock()
	defer p.lock.Unlock()
	p.debug(ctx, "Start")

	pl, err := p.current()
	if err != nil {
		return err
	}
	if p.d.spec.Disabled {
		return p.disableForChange(ctx, pl, "match the spec")
	}
	if pl.IsEnabled() {
		return nil
	}
	if err := p.backend.Enable(pl.GetID(), &backend.PluginEnableConfig{Timeout: p.enableTimeoutSeconds()}); err != nil {
		if pl.IsEnabled() {
			return nil // enabled meanwhile, by another task of the service
		}
		return classify(fmt.Sprintf("error enabling plugin %s", p.d.spec.Name), err)
	}
	p.log(ctx, log.InfoLevel, "plugin enabled")
	return nil
}

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
//   - ctx.Err() when ctx ends, exec.ErrControllerClosed when Close is called;
//   - a temporary error if the Backend closes the event stream.
//
// Waiting costs no CPU: it blocks on the Backend's event channel.
func (p *Controller) Wait(ctx context.Context) error {
	if err := p.enter(); err != nil {
		return err
	}
	p.debug(ctx, "Wait")

	// A task bound by Prepare or Start already holds its reference; a
	// resumed one binds (and takes it) now.
	id := p.boundID()
	if id == "" {
		p.opMu.Lock()
		pl, err := p.current()
		p.opMu.Unlock()
		if err != nil {
			if cerrdefs.IsNotFound(err) {
				return withDetail(ErrPluginRemoved, "", err)
			}
			return err
		}
		id = pl.GetID()
	}
	watched := types.Plugin{ID: id}
	events, cancel := p.backend.SubscribeEvents(1, plugin.EventDisable{Plugin: watched}, plugin.EventRemove{Plugin: watched}, plugin.EventEnable{Plugin: watched})
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
	if !p.d.spec.Disabled != pl.IsEnabled() {
		return ErrMismatchedState
	}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.closedCh:
			return exec.ErrControllerClosed
		case e, ok := <-events:
			if !ok {
				return exec.MakeTemporary(withDetail(errBackend, "plugin event stream closed", cerrdefs.ErrUnavailable))
			}
			switch e.(type) {
			case plugin.EventEnable:
				if p.d.spec.Disabled {
					return ErrPluginEnabled
				}
			case plugin.EventRemove:
				return ErrPluginRemoved
			case plugin.EventDisable:
				if !p.d.spec.Disabled {
					return ErrPluginDisabled
				}
			}
			p.log(ctx, log.DebugLevel, "ignoring an event that matches the spec", "event", fmt.Sprintf("%T", e))
		}
	}
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
func (p *Controller) Remove(ctx context.Context) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	closed, removed, id := p.closed, p.removed, p.pluginID
	p.mu.Unlock()
	if closed {
		return exec.ErrControllerClosed
	}
	if removed {
		return nil
	}
	p.debug(ctx, "Remove")

	p.lock.Lock()
	defer p.lock.Unlock()
	holders.mu.Lock()
	defer holders.mu.Unlock()
	nameOrID := id
	if nameOrID == "" {
		nameOrID = p.d.spec.Name
	}
	pl, err := p.lookup(nameOrID)
	if cerrdefs.IsNotFound(err) {
		holders.forgetLocked(p.backend, id, p.taskID)
		p.markRemoved()
		return nil
	}
	if err != nil {
		return err
	}
	if !p.owns(pl) || (id != "" && pl.GetID() != id) {
		// Not ours (any more): someone else's plugin now has the name.
		holders.forgetLocked(p.backend, id, p.taskID)
		p.markRemoved()
		p.debug(ctx, "plugin is not this service's; leaving it alone")
		return nil
	}
	holders.releaseLocked(p.backend, pl, p.taskID)
	if n := pl.GetRefCount(); n > 0 {
		p.markRemoved()
		p.log(ctx, log.DebugLevel, "plugin still in use; keeping it", "references", strconv.Itoa(n))
		return nil
	}
	if err := p.backend.Remove(pl.GetID(), &backend.PluginRmConfig{ForceRemove: true}); err != nil && !cerrdefs.IsNotFound(err) {
		// The reference is released; a retried Remove must not release
		// again, only retry the removal.
		p.mu.Lock()
		p.pluginID = pl.GetID()
		p.mu.Unlock()
		return classify(fmt.Sprintf("error removing plugin %s", p.d.spec.Name), err)
	}
	p.markRemoved()
	p.log(ctx, log.InfoLevel, "plugin removed")
	return nil
}

func (p *Controller) markRemoved() {
	p.mu.Lock()
	p.removed = true
	p.mu.Unlock()
}

// Close is the close phase from swarmkit. It is idempotent and returns nil;
// afterwards every other method returns exec.ErrControllerClosed, and a Wait
// in flight returns it too. Close does not release the task's reference:
// that is Remove's job, which swarmkit calls before Close.
func (p *Controller) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.closedCh)
	}
	return nil
}

func convertPrivileges(ls []*runtime.PluginPrivilege) types.PluginPrivileges {
	if len(ls) == 0 {
		return nil
	}
	out := make(types.PluginPrivileges, 0, len(ls))
	for _, p := range ls {
		if p == nil {
			continue
		}
		pp := types.PluginPrivilege{
			Name:        p.Name,
			Description: p.Description,
			Value:       p.Value,
		}
		out = append(out, pp)
	}
	return out
}

// missingEnv returns the entries of want ("KEY=VALUE") that have is lacking.
func missingEnv(have, want []string) []string {
	set := make(map[string]bool, len(have))
	for _, kv := range have {
		set[kv] = true
	}
	var missing []string
	for _, kv := range want {
		if !set[kv] {
			missing = append(missing, kv)
		}
	}
	return missing
}

// envKeys returns the keys of env entries, for logging without values.
func envKeys(env []string) []string {
	keys := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
	}
	return keys
}

// holders records which tasks hold a reference on which plugin, per
// Backend, so that each task holds exactly one reference however many
// Controllers swarmkit creates for it (a new one after every agent
// restart), and so that Start can tell this service's references from other
// users'. Acquire and Release on a plugin happen only under holders.mu.
var holders = holderTable{tasks: make(map[holderTask]struct{})}

type holderTable struct {
	mu    sync.Mutex
	tasks map[holderTask]struct{} // which task holds a reference on which plugin
}

type holderKey struct {
	backend  any // the Backend when comparable, nil otherwise
	pluginID string
}

type holderTask struct {
	holderKey
	taskID string
}

func keyFor(b Backend, id string) holderKey {
	k := holderKey{pluginID: id}
	if reflect.TypeOf(b).Comparable() {
		k.backend = b
	}
	return k
}

// holders counts the tasks holding a reference on the plugin. It walks the
// table, which holds one entry per task of the node's plugin services; only
// a disable asks.
func (h *holderTable) holders(b Backend, id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	k, n := keyFor(b, id), 0
	for t := range h.tasks {
		if t.holderKey == k {
			n++
		}
	}
	return n
}

func (h *holderTable) acquireLocked(b Backend, pl *v2.Plugin, taskID string) {
	t := holderTask{keyFor(b, pl.GetID()), taskID}
	if _, ok := h.tasks[t]; ok {
		return
	}
	h.tasks[t] = struct{}{}
	pl.Acquire()
}

func (h *holderTable) releaseLocked(b Backend, pl *v2.Plugin, taskID string) {
	if h.forgetLocked(b, pl.GetID(), taskID) {
		pl.Release()
	}
}

// forgetLocked drops the record of taskID's reference and reports whether
// there was one.
func (h *holderTable) forgetLocked(b Backend, id, taskID string) bool {
	if id == "" {
		return false
	}
	t := holderTask{keyFor(b, id), taskID}
	if _, ok := h.tasks[t]; !ok {
		return false
	}
	delete(h.tasks, t)
	return true
}

// pluginLocks serialise the steps that change a plugin (Prepare, Start,
// Remove) across all the Controllers of a process, so that one task's
// disable-then-upgrade cannot interleave with another task's enable. A
// plugin's lock is chosen by the spec's Name, which is the same string in
// every task of the plugin's one owning service; unrelated plugins may
// share a stripe, which costs only waiting. A Controller holds at most one
// of them at a time.
var pluginLocks [64]sync.Mutex

func pluginLock(name string) *sync.Mutex {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return &pluginLocks[h%uint32(len(pluginLocks))]
}
