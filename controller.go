package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
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
	"github.com/opencontainers/go-digest"
	"github.com/seed-e85c93d5/plugin/internal/health"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
	"github.com/seed-e85c93d5/plugin/internal/pluginspec"
	"github.com/seed-e85c93d5/plugin/internal/privileges"
	"github.com/seed-e85c93d5/plugin/internal/remotedigest"
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
	holder  string // the task's key in the holder table: its ID, or one of this Controller's own for a task without an ID
	service string
	opts    options
	guard   *restartGuard // set by a RestartSafe executor before swarmkit sees the Controller; nil otherwise

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
	closedCh  chan struct{} // closed by Close; ends a Wait in flight
	envWarned bool          // the spec's unsettable env keys have been logged
	warming   time.Time     // when Start first found the enabled plugin not answering; zero once it answered
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
	d, err := readSpec(t)
	if err != nil {
		return nil, err
	}
	c := &Controller{
		backend:  backend,
		d:        d,
		taskID:   t.ID,
		holder:   holderKey(t.ID),
		service:  t.ServiceID,
		opts:     options{enableTimeout: DefaultEnableTimeout, progress: io.Discard, health: DefaultHealthCheck},
		closedCh: make(chan struct{}),
	}
	for _, o := range opts {
		if o != nil {
			o(&c.opts)
		}
	}
	return c, nil
}

// holderKey is the key of a task's reference in the holder table: its ID,
// so that every Controller swarmkit makes for a task shares the task's one
// reference. A task without an ID, which swarmkit never sends but tests
// ported from upstream's build (upstream's Controllers have no task), gets
// a key of its Controller's own: it counts once per Controller, as upstream.
func holderKey(taskID string) string {
	if taskID != "" {
		return taskID
	}
	return "\x00untasked-" + strconv.FormatUint(untasked.Add(1), 10)
}

var untasked atomic.Uint64

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
		spec.Name = defaultName(remote)
	}
	// A bad Name is left to the Backend, which refuses it (invalid
	// argument) at Pull, as upstream.
	d := &decodedSpec{spec: spec, remote: remote, familiar: reference.FamiliarString(remote), pluginKey: pluginKey(spec.Name)}
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
	// pluginKey is the name as the Manager stores it ("vol:latest" for
	// "vol" and "docker.io/library/vol"): it picks the plugin's lock.
	pluginKey string
}

// defaultName is the plugin name for a spec without one: the remote, as
// upstream, except that a remote pinned by digest names the plugin by its
// repository and tag alone ("example.com/vol:1" for
// "example.com/vol:1@sha256:..."). The Manager stores a plugin under the
// name it is pulled as but cannot look up a name with a digest
// ("canonical references cannot be resolved"), so a digest in the name
// would install a plugin that no later step could find.
func defaultName(remote reference.Named) string {
	if _, pinned := remote.(reference.Canonical); !pinned {
		return remote.String()
	}
	name := reference.TrimNamed(remote)
	if tagged, ok := remote.(reference.Tagged); ok {
		if withTag, err := reference.WithTag(name, tagged.Tag()); err == nil {
			return withTag.String()
		}
	}
	return name.String()
}

// pluginKey returns name as the Manager stores it, or name itself if it is
// not a valid reference.
func pluginKey(name string) string {
	ref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	return reference.FamiliarString(reference.TagNameOnly(ref))
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
	// swarmkit's agent logger already names the task and the service
	// (task.id, service.id): say it once.
	if _, ok := l.Data["task.id"]; !ok {
		fields["task"] = p.taskID
	}
	if _, ok := l.Data["service.id"]; !ok {
		fields["service"] = p.service
	}
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
//   - This service's plugin: take the reference, then Upgrade it to the
//     remote (unless the remote is pinned by digest and already installed)
//     and apply the env entries the plugin can take (see below). Both need
//     the plugin disabled: Prepare force-disables it, and Start enables it
//     again. When anything fails after the disable, a plugin that was
//     enabled is enabled again before Prepare returns the error.
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
		if err := p.guard.settled(ctx, p); err != nil {
			return err
		}
	}
	unlock, err := p.begin(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	p.debug(ctx, "Prepare")

	pl, err := p.bind(p.d.spec.Name)
	if err == nil {
		return p.prepareExisting(ctx, pl)
	}
	if !notInstalled(err) {
		return err
	}

	auth, err := p.authFor(ctx)
	if err != nil {
		return err
	}
	if err := p.checkRemoteGrant(ctx, auth); err != nil {
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
		if isIncorrectPrivileges(err) {
			return withDetail(ErrIncorrectPrivileges, fmt.Sprintf("the backend refused the service's grant for plugin %s from %s", p.d.spec.Name, p.d.familiar), err)
		}
		return classify(fmt.Sprintf("error pulling plugin %s from %s", p.d.spec.Name, p.d.familiar), err)
	}
	pl, err = p.bind(p.d.spec.Name)
	if err != nil {
		if notInstalled(err) {
			// Removed between our Pull and bind, or a Backend that cannot
			// find what it just installed: say so, and pull again.
			return exec.MakeTemporary(fmt.Errorf("plugin %s not found right after a successful pull: %w", p.d.spec.Name, err))
		}
		return err
	}
	if err := p.checkInstalledGrant(pl); err != nil {
		// The Backend installed what the grant does not cover (docker
		// v28's Manager does, CVE-2026-33997): never enable it.
		p.unpull(ctx, pl, err)
		return err
	}
	p.log(ctx, log.InfoLevel, "plugin pulled", "remote", p.d.familiar)
	return nil
}

// checkRemoteGrant compares the privileges the remote's plugin requires,
// as a Privileger Backend tells them, with the spec's grant. It returns
// nil when the Backend is no Privileger, or when it answers none while the
// spec grants some: that is also moby's answer to a failed fetch, so the
// check of the installed config after the pull or upgrade decides.
func (p *Controller) checkRemoteGrant(ctx context.Context, auth *registry.AuthConfig) error {
	pr, ok := p.backend.(Privileger)
	if !ok {
		return nil
	}
	required, err := pr.Privileges(ctx, p.d.remote, nil, auth)
	if err != nil {
		return classify(fmt.Sprintf("error fetching the privileges of plugin %s from %s", p.d.spec.Name, p.d.familiar), err)
	}
	if len(required) == 0 && len(p.d.spec.Privileges) > 0 {
		p.debug(ctx, "the backend tells no privileges for the remote (or could not fetch them); checking the installed config instead")
		return nil
	}
	return p.grantError(fmt.Sprintf("plugin %s from %s", p.d.spec.Name, p.d.familiar), required)
}

// checkInstalledGrant compares the privileges pl's installed config
// requires with the spec's grant.
func (p *Controller) checkInstalledGrant(pl *v2.Plugin) error {
	return p.grantError(fmt.Sprintf("plugin %s as installed from %s", p.d.spec.Name, pl.PluginObj.PluginReference),
		privileges.Required(pl.PluginObj.Config))
}

// grantError returns ErrIncorrectPrivileges, naming what differs, unless
// required is exactly the spec's grant.
func (p *Controller) grantError(what string, required types.PluginPrivileges) error {
	missing, extra := privileges.Diff(required, convertPrivileges(p.d.spec.Privileges))
	if len(missing) == 0 && len(extra) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString(what)
	b.WriteString(" requires other privileges than the service grants")
	if len(missing) > 0 {
		b.WriteString("; required, not granted: ")
		b.WriteString(privileges.Format(missing))
	}
	if len(extra) > 0 {
		b.WriteString("; granted, not required: ")
		b.WriteString(privileges.Format(extra))
	}
	return withDetail(ErrIncorrectPrivileges, b.String(), nil)
}

// isIncorrectPrivileges reports whether err is the Manager's refusal of a
// grant (unclassified, in moby's words) or already ErrIncorrectPrivileges.
func isIncorrectPrivileges(err error) bool {
	return errors.Is(err, ErrIncorrectPrivileges) || strings.Contains(err.Error(), "incorrect privileges")
}

// unpull removes pl, which this Prepare just pulled and bound, because its
// config requires what the grant does not cover (why). It runs under the
// plugin's lock, so no other task of the service has bound to pl. If the
// removal fails, the plugin stays installed and disabled, and the task's
// Remove tries again.
func (p *Controller) unpull(ctx context.Context, pl *v2.Plugin, why error) {
	holders.mu.Lock()
	holders.releaseLocked(pl, p.holder)
	holders.mu.Unlock()
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
// which the task is already bound.
func (p *Controller) prepareExisting(ctx context.Context, pl *v2.Plugin) error {
	wasEnabled := pl.IsEnabled()
	others := p.otherReferences(pl)
	if p.d.spec.Disabled && wasEnabled && others > 0 {
		return p.inUse(others, "match the spec")
	}
	_, pinned := p.d.remote.(reference.Canonical)
	sameRemote := pl.PluginObj.PluginReference == p.d.remote.String()
	upgrade := !pinned || !sameRemote
	var env []string
	var auth *registry.AuthConfig
	if upgrade {
		var err error
		if auth, err = p.authFor(ctx); err != nil {
			return err
		}
		// Decide before disabling: is there anything new at the remote?
		if upgrade, err = p.remoteChanged(ctx, auth, pl, sameRemote); err != nil {
			return err
		}
	}
	if upgrade {
		// Refuse an upgrade the grant does not cover before anything is
		// disabled, so the running version stays in service.
		if err := p.checkRemoteGrant(ctx, auth); err != nil {
			return err
		}
	} else {
		if err := p.checkInstalledGrant(pl); err != nil {
			return err
		}
		if env = p.envToSet(ctx, pl); len(env) == 0 {
			p.debug(ctx, "plugin already at the remote's manifest with the spec's env; nothing to do")
			return nil
		}
	}

	if err := p.forceDisable(ctx, pl, others); err != nil {
		return err
	}
	err := p.changeDisabled(ctx, pl, upgrade, auth, env)
	switch {
	case err != nil && errors.Is(err, ErrIncorrectPrivileges):
		// Only the upgraded config showed it (the registry served other
		// content than it told before): security wins, the plugin stays
		// disabled until a spec that grants what it needs, or an older
		// remote, comes.
		p.log(ctx, log.ErrorLevel, "plugin left disabled: the upgraded version requires other privileges than the service grants", "reason", err.Error())
	case err != nil && wasEnabled:
		p.reenable(ctx, pl.GetID())
	}
	return err
}

// remoteChanged reports whether the remote names another manifest than
// pl's, so that Prepare must upgrade, asking a ManifestResolver Backend or,
// for moby's Manager, the registry itself. For any other Backend it is
// upstream's rule: always. A registry that cannot be reached leaves pl as
// it is: in service on the installed version when pl is already at the
// spec's remote (one warning), or with a temporary error, nothing
// disabled, when the spec names another remote.
func (p *Controller) remoteChanged(ctx context.Context, auth *registry.AuthConfig, pl *v2.Plugin, sameRemote bool) (bool, error) {
	var d digest.Digest
	var err error
	switch b := p.backend.(type) {
	case ManifestResolver:
		d, err = b.ResolveManifest(ctx, p.d.remote, auth)
	case *plugin.Manager:
		d, err = remotedigest.Resolve(ctx, reference.TagNameOnly(p.d.remote), auth, p.opts.hosts)
	default:
		return true, nil
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return false, ctx.Err()
	case err != nil && sameRemote:
		p.log(ctx, log.WarnLevel, "cannot check the remote for a new version; the installed version stays in service", "remote", p.d.familiar, "error", err.Error())
		return false, nil
	case err != nil:
		return false, exec.MakeTemporary(classify(fmt.Sprintf("cannot check plugin %s's new remote %s; the installed version stays in service", p.d.spec.Name, p.d.familiar), err))
	case sameRemote && d == pl.Manifest:
		p.debug(ctx, "the remote names the installed manifest: no upgrade")
		return false, nil
	}
	return true, nil
}

// changeDisabled sets env on the disabled plugin pl, or, if upgrade is set,
// upgrades it and then sets the env entries of the spec that the new
// config lets it take.
func (p *Controller) changeDisabled(ctx context.Context, pl *v2.Plugin, upgrade bool, auth *registry.AuthConfig, env []string) error {
	if upgrade {
		if err := p.backend.Upgrade(ctx, p.d.remote, p.d.spec.Name, nil, auth, convertPrivileges(p.d.spec.Privileges), p.opts.progress); err != nil {
			if isIncorrectPrivileges(err) {
				return withDetail(ErrIncorrectPrivileges, fmt.Sprintf("the backend refused the service's grant for plugin %s from %s", p.d.spec.Name, p.d.familiar), err)
			}
			return classify(fmt.Sprintf("error upgrading plugin %s to %s", p.d.spec.Name, p.d.familiar), err)
		}
		p.log(ctx, log.InfoLevel, "plugin upgraded", "remote", p.d.familiar)
		if err := p.checkInstalledGrant(pl); err != nil {
			return err
		}
		// The config is now the new remote's: decide from it.
		env = p.envToSet(ctx, pl)
	}
	if len(env) == 0 {
		return nil
	}
	if err := p.backend.(Setter).Set(pl.GetID(), env); err != nil {
		return classify(fmt.Sprintf("error setting env of plugin %s", p.d.spec.Name), err)
	}
	p.log(ctx, log.InfoLevel, "plugin env updated", "env.keys", fmt.Sprint(envKeys(env)))
	return nil
}

// envToSet returns the entries of the spec's Env that differ from pl's
// settings and that the Backend's Set accepts: none without a Setter, and
// otherwise the "KEY=VALUE" entries whose key pl's config declares with a
// settable value, the rule of moby's v2.Plugin.Set. It logs the keys it
// skips once per task.
func (p *Controller) envToSet(ctx context.Context, pl *v2.Plugin) []string {
	if _, ok := p.backend.(Setter); !ok {
		return nil
	}
	settable, skipped := settableEnv(pl.PluginObj.Config.Env, lastPerKey(p.d.spec.Env))
	if len(skipped) > 0 {
		p.mu.Lock()
		warn := !p.envWarned
		p.envWarned = true
		p.mu.Unlock()
		if warn {
			p.log(ctx, log.WarnLevel, "ignoring env entries the plugin cannot set: no KEY=VALUE form, or a key its config does not declare settable", "env.keys", fmt.Sprint(skipped))
		}
	}
	return missingEnv(pl.PluginObj.Settings.Env, settable)
}

// otherReferences counts the references on pl that are not held by this
// service's tasks on the node: volumes, containers logging through it,
// networks.
func (p *Controller) otherReferences(pl *v2.Plugin) int {
	return max(pl.GetRefCount()-holders.holders(pl), 0)
}

func (p *Controller) inUse(others int, why string) error {
	err := withDetail(ErrPluginInUse, fmt.Sprintf("%s has %d reference(s) besides service %s's tasks", p.d.spec.Name, others, p.service), nil)
	return exec.MakeTemporary(fmt.Errorf("cannot disable plugin %s to %s: %w", p.d.spec.Name, why, err))
}

// forceDisable disables an enabled plugin so that it can be upgraded or
// reconfigured. The Manager refuses a plain Disable while any reference
// exists, and this service's own tasks hold references, so the disable is
// forced, as stock dockerd does; others is how many references besides
// this service's tasks are torn away for the change, which Start ends by
// enabling the plugin again.
func (p *Controller) forceDisable(ctx context.Context, pl *v2.Plugin, others int) error {
	if !pl.IsEnabled() {
		return nil
	}
	if err := p.backend.Disable(pl.GetID(), &backend.PluginDisableConfig{ForceDisable: true}); err != nil {
		if !pl.IsEnabled() {
			return nil // someone else disabled it meanwhile
		}
		return classify(fmt.Sprintf("cannot disable plugin %s to change it", p.d.spec.Name), err)
	}
	if others > 0 {
		p.log(ctx, log.WarnLevel, "plugin disabled for a change while other users hold it", "references", strconv.Itoa(others))
	} else {
		p.log(ctx, log.InfoLevel, "plugin disabled")
	}
	return nil
}

// reenable restores a plugin that Prepare disabled before a failed change.
func (p *Controller) reenable(ctx context.Context, id string) {
	err := p.backend.Enable(id, &backend.PluginEnableConfig{Timeout: p.enableTimeoutSeconds()})
	if err != nil {
		p.log(ctx, log.WarnLevel, "could not re-enable plugin after a failed change", "error", err.Error())
		return
	}
	p.log(ctx, log.InfoLevel, "plugin re-enabled after a failed change")
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
		wrapped := classify(fmt.Sprintf("error looking up plugin %s", p.d.spec.Name), err)
		if !hasClass(err) && !isTransient(err) {
			return nil, &unclassifiedLookupError{wrapped}
		}
		return nil, wrapped
	case pl == nil:
		return nil, withDetail(errBackend, "Get returned neither a plugin nor an error", nil)
	case pl.GetID() == "":
		return nil, withDetail(errBackend, "plugin has an empty ID", nil)
	}
	return pl, nil
}

// unclassifiedLookupError is an error of Backend.Get that carries no
// errdefs class and is not temporary: the answer of a hand-written fake
// (moby's own mockBackend returns errors.New("not found")) rather than of
// moby's Manager, which classifies every error.
type unclassifiedLookupError struct{ error }

func (e *unclassifiedLookupError) Unwrap() error { return e.error }

// notInstalled reports whether a lookup error means that no plugin of the
// name is installed: the Backend says not found, or, as upstream reads any
// error of Get in Prepare, it gives an unclassified, permanent error.
// Classified errors (an ambiguous name, an unavailable backend) and
// temporary ones are not taken as an answer.
func notInstalled(err error) bool {
	var unclassified *unclassifiedLookupError
	return cerrdefs.IsNotFound(err) || errors.As(err, &unclassified)
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
	holders.mu.Lock()
	defer holders.mu.Unlock()
	pl, err := p.lookup(nameOrID)
	if err != nil {
		return nil, err
	}
	if !p.owns(pl) {
		return nil, withDetail(ErrPluginExists, p.d.spec.Name, nil)
	}
	holders.acquireLocked(pl, p.holder)
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
	return p.bind(p.d.spec.Name)
}

// begin starts a step that may bind or change the plugin: it takes opMu
// and the plugin's lock (giving up when ctx ends) and checks that the
// Controller may still act. The returned func releases both.
func (p *Controller) begin(ctx context.Context) (unlock func(), err error) {
	p.opMu.Lock()
	if err := p.enter(); err != nil {
		p.opMu.Unlock()
		return nil, err
	}
	unlockPlugin, err := pluginLocks.lock(ctx, p.d.pluginKey)
	if err != nil {
		p.opMu.Unlock()
		return nil, err
	}
	return func() {
		unlockPlugin()
		p.opMu.Unlock()
	}, nil
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
	unlock, err := p.begin(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	p.debug(ctx, "Start")

	pl, err := p.current()
	if err != nil {
		return err
	}
	if p.d.spec.Disabled {
		if !pl.IsEnabled() {
			return nil
		}
		if others := p.otherReferences(pl); others > 0 {
			return p.inUse(others, "match the spec")
		}
		return p.forceDisable(ctx, pl, 0)
	}
	if pl.IsEnabled() && notAnswering.take(pl.GetID()) {
		// A task's Wait found it hung: restart it if it still does not
		// answer, and only then.
		if err := p.probe(ctx, pl); err != nil && !errors.Is(err, errNotProbed) {
			p.log(ctx, log.WarnLevel, "plugin does not answer; restarting it", "probe", p.probeName(pl), "error", err.Error())
			if err := p.backend.Disable(pl.GetID(), &backend.PluginDisableConfig{ForceDisable: true}); err != nil && pl.IsEnabled() {
				notAnswering.mark(pl.GetID())
				return classify(fmt.Sprintf("cannot restart plugin %s, which does not answer", p.d.spec.Name), err)
			}
		}
	}
	if !pl.IsEnabled() {
		if err := p.backend.Enable(pl.GetID(), &backend.PluginEnableConfig{Timeout: p.enableTimeoutSeconds()}); err != nil {
			if !pl.IsEnabled() {
				return classify(fmt.Sprintf("error enabling plugin %s", p.d.spec.Name), err)
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
// it not answering.
func (p *Controller) ready(ctx context.Context, pl *v2.Plugin) error {
	err := p.probe(ctx, pl)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil || errors.Is(err, errNotProbed) {
		p.warming = time.Time{}
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	now := time.Now()
	if p.warming.IsZero() {
		p.warming = now
	}
	if waited := now.Sub(p.warming); waited >= p.opts.enableTimeout {
		return withDetail(ErrPluginNotAnswering, fmt.Sprintf("%s did not answer %s within the enable timeout (%s); last answer: %v", p.d.spec.Name, p.probeName(pl), p.opts.enableTimeout, err), nil)
	}
	return exec.MakeTemporary(withDetail(ErrPluginNotAnswering, fmt.Sprintf("waiting for %s to answer %s: %v", p.d.spec.Name, p.probeName(pl), err), nil))
}

// errNotProbed is probe's answer for a plugin it cannot ask: no socket
// address and no PluginProber Backend.
var errNotProbed = errors.New("plugin cannot be probed")

// probe asks the enabled plugin pl whether it answers, within the health
// check's timeout: through a PluginProber Backend, or over the socket the
// Manager gave it.
func (p *Controller) probe(ctx context.Context, pl *v2.Plugin) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.health.Timeout)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() { // Close ends a probe in flight too
		select {
		case <-p.closedCh:
			cancel()
		case <-done:
		}
	}()
	if pr, ok := p.backend.(PluginProber); ok {
		return pr.ProbePlugin(ctx, pl.GetID())
	}
	addr := pl.Addr()
	if addr == nil {
		return errNotProbed
	}
	err := health.Probe(ctx, addr, pl.GetTypes())
	if errors.Is(err, health.ErrNoAddress) {
		return errNotProbed
	}
	return err
}

// probeName says what probe asks pl, for messages.
func (p *Controller) probeName(pl *v2.Plugin) string {
	if _, ok := p.backend.(PluginProber); ok {
		return "the Backend's probe"
	}
	return health.Name(pl.GetTypes())
}

// notAnswering records the plugins that a task's Wait found not answering,
// by ID, so that the next task's Start restarts such a plugin (if it still
// does not answer) and no other.
var notAnswering = pluginMarks{ids: make(map[string]struct{})}

type pluginMarks struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

func (m *pluginMarks) mark(id string) {
	m.mu.Lock()
	m.ids[id] = struct{}{}
	m.mu.Unlock()
}

// take reports whether id was marked, and clears the mark.
func (m *pluginMarks) take(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.ids[id]
	delete(m.ids, id)
	return ok
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
func (p *Controller) Wait(ctx context.Context) (err error) {
	defer func() { err = stepError(ctx, err) }()
	if err := p.enter(); err != nil {
		return err
	}
	p.debug(ctx, "Wait")

	// A task bound by Prepare or Start already holds its reference; a
	// resumed one binds (and takes it) now, unless Remove has begun.
	id := p.boundID()
	if id == "" {
		unlock, err := p.begin(ctx)
		if err != nil {
			return err
		}
		pl, err := p.current()
		unlock()
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

	var tick <-chan time.Time
	if !p.d.spec.Disabled && p.opts.health.Interval > 0 {
		t := time.NewTicker(p.opts.health.Interval)
		defer t.Stop()
		tick = t.C
	}
	misses := 0
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.closedCh:
			return exec.ErrControllerClosed
		case <-tick:
			err := p.probe(ctx, pl)
			switch {
			case err == nil || errors.Is(err, errNotProbed):
				misses = 0
				continue
			case ctx.Err() != nil:
				return ctx.Err()
			}
			misses++
			if misses < p.opts.health.Threshold {
				p.log(ctx, log.WarnLevel, "plugin did not answer its health check", "probe", p.probeName(pl), "misses", strconv.Itoa(misses), "error", err.Error())
				continue
			}
			notAnswering.mark(id)
			p.log(ctx, log.ErrorLevel, "plugin does not answer: failing the task; the next task restarts the plugin", "probe", p.probeName(pl), "misses", strconv.Itoa(misses), "error", err.Error())
			return withDetail(ErrPluginNotAnswering, fmt.Sprintf("%s missed %d health checks in a row (%s); last answer: %v", p.d.spec.Name, misses, p.probeName(pl), err), nil)
		case e, ok := <-events:
			if !ok {
				return exec.MakeTemporary(errEventsClosed)
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
	// Remove waits for the plugin's lock whatever ctx says: swarmkit calls
	// it once, best effort, with a context a leave cancels early, and
	// nothing retries it, so giving up here would leave the plugin behind.
	// The holder is another step of the plugin, which ends when its own
	// context does.
	unlock, err := pluginLocks.lock(context.WithoutCancel(ctx), p.d.pluginKey)
	if err != nil {
		return err
	}
	defer unlock()

	pl, err := p.release(ctx, id, bound)
	if err != nil || pl == nil {
		return err
	}
	if p.guard != nil && p.guard.keep(ctx, p, pl) {
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
		return classify(fmt.Sprintf("error removing plugin %s", p.d.spec.Name), err)
	}
	p.markRemoved()
	p.log(ctx, log.InfoLevel, "plugin removed")
	return nil
}

// release drops the task's reference and returns the plugin if it is this
// service's and no reference remains, so Remove should remove it; nil
// otherwise, with the task marked removed.
func (p *Controller) release(ctx context.Context, id string, bound *v2.Plugin) (*v2.Plugin, error) {
	holders.mu.Lock()
	defer holders.mu.Unlock()
	nameOrID := id
	if nameOrID == "" {
		nameOrID = p.d.spec.Name
	}
	pl, err := p.lookup(nameOrID)
	if cerrdefs.IsNotFound(err) {
		holders.forgetLocked(bound, p.holder)
		p.markRemoved()
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !p.owns(pl) || (id != "" && pl.GetID() != id) {
		// Not ours (any more): someone else's plugin now has the name.
		holders.forgetLocked(bound, p.holder)
		p.markRemoved()
		p.debug(ctx, "plugin is not this service's; leaving it alone")
		return nil, nil
	}
	if bound != nil && bound != pl {
		// The Backend now returns another object for the plugin (a
		// daemon restart in between, say): the old one's count is moot.
		holders.forgetLocked(bound, p.holder)
	}
	holders.releaseLocked(pl, p.holder)
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
		p.guard.forget(p)
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
		p.guard.forget(p)
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

// settableEnv splits the spec's env entries into those moby's
// v2.Plugin.Set accepts for a plugin whose config declares declared, and
// the keys of the others: entries without "=" (Set would read them as a
// key without a value), keys with a dot (Set reads NAME.FIELD), undeclared
// keys and keys whose value is not settable.
func settableEnv(declared []types.PluginEnv, env []string) (settable, skipped []string) {
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if ok && !strings.Contains(k, ".") && envSettable(declared, k) {
			settable = append(settable, kv)
		} else {
			skipped = append(skipped, k)
		}
	}
	return settable, skipped
}

func envSettable(declared []types.PluginEnv, key string) bool {
	for _, e := range declared {
		if e.Name == key {
			// moby's isSettable: without a field named, exactly one
			// settable field, and for env it must be "value".
			return len(e.Settable) == 1 && e.Settable[0] == "value"
		}
	}
	return false
}

// lastPerKey returns env with one entry per key, the last one, in the
// order of those last entries: what moby's WithEnv leaves at install, so
// that an unchanged spec with a repeated key never looks changed.
func lastPerKey(env []string) []string {
	last := make(map[string]int, len(env))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = i
	}
	out := make([]string, 0, len(last))
	for i, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); last[k] == i {
			out = append(out, kv)
		}
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

// stepError makes the error of a step that ends because its ctx is done
// tell swarmkit's exec.Do to retry, whatever the Backend wrapped around
// ctx's error: exec.Do retries an error whose errors.Cause is
// context.Canceled or DeadlineExceeded, and errors.Cause follows only
// Cause methods. errors.Is still reaches both err and ctx's error.
func stepError(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	var done *ctxDoneError
	if errors.As(err, &done) || err == ctx.Err() {
		return err
	}
	return &ctxDoneError{err: err, ctxErr: ctx.Err()}
}

// ctxDoneError is the error of a step cut short by its context.
type ctxDoneError struct {
	err    error
	ctxErr error
}

func (e *ctxDoneError) Error() string   { return e.err.Error() }
func (e *ctxDoneError) Cause() error    { return e.ctxErr }
func (e *ctxDoneError) Unwrap() []error { return []error{e.err, e.ctxErr} }

// isNil reports whether b is nil or an interface holding a nil pointer,
// map, slice, func or channel, which would fail at its first call.
func isNil(b any) bool {
	if b == nil {
		return true
	}
	switch v := reflect.ValueOf(b); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

// holders records which tasks hold a reference on which plugin, so that
// each task holds exactly one reference however many Controllers swarmkit
// creates for it (a new one after every agent restart), and so that the
// Controller can tell this service's references from other users'. It is
// keyed by the plugin object itself, the *v2.Plugin that the Manager
// returns for a plugin on every Get and that holds its reference count, so
// it does not matter which Backend value (a wrapper per Controller, say)
// returned it. Acquire and Release on a plugin happen only under holders.mu.
var holders = holderTable{tasks: make(map[holderTask]struct{})}

type holderTable struct {
	mu    sync.Mutex
	tasks map[holderTask]struct{} // which task holds a reference on which plugin
}

type holderTask struct {
	plugin *v2.Plugin
	taskID string
}

// holders counts the tasks holding a reference on pl. It walks the table,
// which holds one entry per task of the node's plugin services; only a
// disable asks.
func (h *holderTable) holders(pl *v2.Plugin) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for t := range h.tasks {
		if t.plugin == pl {
			n++
		}
	}
	return n
}

func (h *holderTable) acquireLocked(pl *v2.Plugin, taskID string) {
	t := holderTask{pl, taskID}
	if _, ok := h.tasks[t]; ok {
		return
	}
	h.tasks[t] = struct{}{}
	pl.Acquire()
}

func (h *holderTable) releaseLocked(pl *v2.Plugin, taskID string) {
	if h.forgetLocked(pl, taskID) {
		pl.Release()
	}
}

// forgetLocked drops the record of taskID's reference on pl and reports
// whether there was one.
func (h *holderTable) forgetLocked(pl *v2.Plugin, taskID string) bool {
	if pl == nil {
		return false
	}
	t := holderTask{pl, taskID}
	if _, ok := h.tasks[t]; !ok {
		return false
	}
	delete(h.tasks, t)
	return true
}

// pluginLocks serialise the steps that change a plugin (Prepare, Start,
// Remove, Wait's binding, and the removal of a plugin kept across a
// restart) across all the Controllers of a process, so that one task's
// disable-then-upgrade cannot interleave with another task's enable. A
// plugin's lock is chosen by its name as the Manager stores it, so "vol",
// "vol:latest" and "docker.io/library/vol" share one, and unrelated
// plugins never do. A lock exists while a step holds or waits for it. A
// Controller holds at most one of them at a time.
var pluginLocks = lockTable{locks: make(map[string]*keyedLock)}

// lockTable is a set of mutexes keyed by plugin name whose lock can give
// up when a context ends.
type lockTable struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	held  chan struct{} // holds one token while locked
	users int           // holders and waiters; guarded by lockTable.mu
}

// lock takes key's lock and returns the function that releases it. A free
// lock is always taken, even when ctx is done; a held one is waited for
// until ctx ends (never, for a context without a Done channel, such as
// context.WithoutCancel's), and then lock returns ctx.Err().
func (t *lockTable) lock(ctx context.Context, key string) (unlock func(), err error) {
	t.mu.Lock()
	l := t.locks[key]
	if l == nil {
		l = &keyedLock{held: make(chan struct{}, 1)}
		t.locks[key] = l
	}
	l.users++
	t.mu.Unlock()
	unlock = func() {
		<-l.held
		t.leave(key, l)
	}
	select {
	case l.held <- struct{}{}:
		return unlock, nil
	default:
	}
	select {
	case l.held <- struct{}{}:
		return unlock, nil
	case <-ctx.Done():
		t.leave(key, l)
		return nil, ctx.Err()
	}
}

// leave drops a holder or waiter of l, and l itself once it has none.
func (t *lockTable) leave(key string, l *keyedLock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.users--; l.users == 0 {
		delete(t.locks, key)
	}
}

// Restart safety.
//
// swarmkit stops a node the same way for "docker swarm leave" and for a
// daemon shutdown: the agent leaves, which removes every assignment, so the
// worker calls Remove on every task's Controller and the plugins go. Only the
// daemon knows which of the two it is doing. RestartSafe and ShuttingDown
// are the two calls it makes to tell the Controllers.

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
//     Until the first complete set, a Prepare of another service's task
//     for a recorded plugin's name waits for it, rather than fail with
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
// backend or an empty dir. A record it cannot read is logged and treated
// as empty.
func RestartSafe(e exec.Executor, backend Backend, dir string) (exec.Executor, error) {
	switch {
	case isNil(e):
		return nil, withDetail(errRestartSafe, "needs an executor, got nil", nil)
	case isNil(backend):
		return nil, withDetail(errRestartSafe, "needs a backend, got nil", nil)
	case dir == "":
		return nil, withDetail(errRestartSafe, "needs a directory for its record, got \"\"", nil)
	}
	g := &restartGuard{
		backend: backend,
		file:    keptplugins.Open(dir),
		live:    make(map[*Controller]api.TaskState),
		swept:   make(chan struct{}),
		changed: make(chan struct{}),
	}
	g.pending = loadRecord(g.file)
	guards.Lock()
	old := guards.m[filepath.Clean(dir)]
	guards.m[filepath.Clean(dir)] = g
	guards.Unlock()
	if old != nil {
		old.stopSweep() // the node starts again: this guard takes over the record
	}
	return &restartSafeExecutor{Executor: e, guard: g}, nil
}

// loadRecord reads the record of kept plugins, after removing the
// temporary files of a Save that a crash interrupted. A record it cannot
// read is never overwritten or deleted: it is set aside (see
// keptplugins.File.SetAside), logged at error with its new path, and the
// plugins it listed stay installed for a person to look at.
func loadRecord(f *keptplugins.File) []keptplugins.Plugin {
	l := log.G(context.Background()).WithField("controller", "plugin")
	if err := f.RemoveTemps(); err != nil {
		l.WithError(err).Warn("cannot remove the temporary files of an interrupted write of the kept-plugin record")
	}
	kept, err := f.Load()
	if err == nil {
		return kept
	}
	aside, aerr := f.SetAside(time.Now())
	if aerr != nil {
		l.WithError(err).WithField("error.aside", aerr.Error()).
			Error("the record of plugins kept at the last shutdown is unreadable and cannot be set aside; the plugins it lists stay installed")
		return nil
	}
	l.WithError(err).WithField("record", aside).
		Error("the record of plugins kept at the last shutdown is unreadable: set aside; the plugins it lists stay installed, remove them by hand if their services are gone")
	return nil
}

// ShuttingDown tells the executor RestartSafe returned for dir that its node
// is stopping because the daemon shuts down, not because it leaves the
// swarm: from now on its Controllers keep their plugins (see RestartSafe).
// A daemon calls it once, just before it stops the swarm node for a
// shutdown, and never on "docker swarm leave". It is safe to call from any
// goroutine, more than once, and for a dir no executor has (a daemon not in
// a swarm): then it does nothing. It cannot be undone; the next start of the
// node calls RestartSafe again.
func ShuttingDown(dir string) {
	if g := guardFor(dir); g != nil {
		g.shutdown()
	}
}

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
	g := guardFor(dir)
	if g == nil {
		// No node ran in this process: a guard of its own for the record.
		f := keptplugins.Open(dir)
		g = &restartGuard{backend: backend, file: f, swept: make(chan struct{}), changed: make(chan struct{})}
		g.pending = loadRecord(f)
	}
	return g.leftSwarm(backend)
}

func guardFor(dir string) *restartGuard {
	guards.Lock()
	defer guards.Unlock()
	return guards.m[filepath.Clean(dir)]
}

// guards maps each RestartSafe directory to its node's guard.
var guards = struct {
	sync.Mutex
	m map[string]*restartGuard
}{m: make(map[string]*restartGuard)}

// restartGuard is the restart safety of one node: its record of kept
// plugins and the plugin Controllers its executor handed out.
//
// Its sweep, the removal of kept plugins no task claimed, runs on a
// goroutine of its own (never on swarmkit's worker, which waits for the
// executor's calls under its lock), one at a time; ShuttingDown, LeftSwarm
// and a later RestartSafe of the same directory stop it.
type restartGuard struct {
	backend Backend
	file    *keptplugins.File

	mu           sync.Mutex
	shuttingDown bool
	pending      []keptplugins.Plugin          // recorded: kept and not yet claimed, or being removed
	live         map[*Controller]api.TaskState // the desired state of each one's task when swarmkit asked for it
	complete     bool                          // a complete set of assignments is being applied
	swept        chan struct{}                 // closed once the first complete set decided the record
	changed      chan struct{}                 // closed and replaced when pending or removing changes
	removing     map[string]bool               // IDs the sweep has not finished with
	sweepCancel  context.CancelFunc            // stops the sweep in flight; nil when none
	sweepDone    chan struct{}                 // closed when the sweep in flight ends
}

// watch makes c's Remove keep its plugin after ShuttingDown, and lets c's
// task, whose desired state is desired, claim a kept plugin.
func (g *restartGuard) watch(c *Controller, desired api.TaskState) {
	g.mu.Lock()
	g.live[c] = desired
	g.mu.Unlock()
	c.guard = g
}

// forget drops c: its task is no longer assigned.
func (g *restartGuard) forget(c *Controller) {
	g.mu.Lock()
	delete(g.live, c)
	g.mu.Unlock()
}

// claims reports whether c's task, whose desired state is desired, takes
// over the kept plugin k. A task the managers are removing (its service
// was deleted) does not: its Remove would remove the plugin soon, and the
// plugin's name may already be another service's.
func (c *Controller) claims(k keptplugins.Plugin, desired api.TaskState) bool {
	if k.Service == "" || c.service != k.Service || desired >= api.TaskStateRemove {
		return false
	}
	return c.boundID() == k.ID || c.d.pluginKey == pluginKey(k.Name)
}

// claimantLocked returns the Controller that takes over k: of those that
// claim it, the one whose task's desired state is lowest (a task meant to
// run before one being shut down, as after a node marked down, where the
// old task is reassigned SHUTDOWN and a new one comes), then by task ID.
// The caller holds g.mu.
func (g *restartGuard) claimantLocked(k keptplugins.Plugin) *Controller {
	var best *Controller
	var bestState api.TaskState
	for c, desired := range g.live {
		if !c.claims(k, desired) {
			continue
		}
		if best == nil || desired < bestState || (desired == bestState && c.taskID < best.taskID) {
			best, bestState = c, desired
		}
	}
	return best
}

// notifyLocked wakes the Prepares waiting in settled. The caller holds g.mu.
func (g *restartGuard) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// saveLocked writes pending as the record. The caller holds g.mu.
func (g *restartGuard) saveLocked(next []keptplugins.Plugin) error {
	if err := g.file.Save(next); err != nil {
		return err
	}
	g.pending = next
	g.notifyLocked()
	return nil
}

// shutdown makes the node's Controllers keep their plugins from now on, and
// records at once the plugins they hold, so that a daemon that exits before
// swarmkit's Remove calls have all run (the agent does not wait for them)
// still knows at its next start what it kept. It stops the sweep: what it
// has not removed stays recorded.
func (g *restartGuard) shutdown() {
	g.mu.Lock()
	if g.shuttingDown {
		g.mu.Unlock()
		return
	}
	g.shuttingDown = true
	g.mu.Unlock()
	g.stopSweep()

	g.mu.Lock()
	defer g.mu.Unlock()
	next := slices.Clone(g.pending)
	for c := range g.live {
		nameOrID := c.boundID()
		if nameOrID == "" {
			nameOrID = c.d.spec.Name
		}
		pl, err := g.backend.Get(nameOrID)
		if err != nil || pl == nil || pl.GetID() == "" || !c.owns(pl) || c.service == "" {
			continue // nothing of the task's service to keep
		}
		next = withKept(next, c.kept(pl))
	}
	if slices.Equal(next, g.pending) {
		return
	}
	if err := g.saveLocked(next); err != nil {
		log.G(context.Background()).WithError(err).WithField("controller", "plugin").
			Warn("cannot record the plugins to keep across the restart; each task's Remove tries again")
	}
}

// decidedLocked reports whether a complete set of assignments has decided
// the kept plugins since the node started. The caller holds g.mu.
func (g *restartGuard) decidedLocked() bool {
	select {
	case <-g.swept:
		return true
	default:
		return false
	}
}

// kept is the record of pl, kept for c's task.
func (c *Controller) kept(pl *v2.Plugin) keptplugins.Plugin {
	return keptplugins.Plugin{ID: pl.GetID(), Name: pl.Name(), Service: c.service, Task: c.taskID, Kept: time.Now().UTC()}
}

// withKept returns kept with k in the place of any entry of k's plugin.
func withKept(kept []keptplugins.Plugin, k keptplugins.Plugin) []keptplugins.Plugin {
	kept = slices.DeleteFunc(kept, func(o keptplugins.Plugin) bool { return o.ID == k.ID })
	return append(kept, k)
}

// without returns kept less the entry of the plugin id.
func without(kept []keptplugins.Plugin, id string) []keptplugins.Plugin {
	return slices.DeleteFunc(slices.Clone(kept), func(o keptplugins.Plugin) bool { return o.ID == id })
}

// keep records pl, which p's Remove is about to remove, if the node is
// shutting down, and reports whether it did: then Remove leaves pl
// installed. A record that cannot be written means pl is removed as usual,
// so that nothing is kept that the next start would not know of.
func (g *restartGuard) keep(ctx context.Context, p *Controller, pl *v2.Plugin) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.shuttingDown || p.service == "" {
		return false
	}
	k := p.kept(pl)
	if i := slices.IndexFunc(g.pending, func(o keptplugins.Plugin) bool { return o.ID == k.ID }); i >= 0 && g.pending[i].Service == k.Service {
		return true // recorded by ShuttingDown
	}
	if err := g.saveLocked(withKept(slices.Clone(g.pending), k)); err != nil {
		p.log(ctx, log.WarnLevel, "cannot record the plugin to keep across the restart; removing it", "error", err.Error())
		return false
	}
	return true
}

// settled returns once a Prepare of p may look at the plugins: at once,
// unless a plugin of p's name was kept for another service and is not
// decided yet (the node's first complete set of assignments has not come)
// or is being removed (the sweep has not finished with it).
func (g *restartGuard) settled(ctx context.Context, p *Controller) error {
	logged := false
	for {
		g.mu.Lock()
		other := ""
		for _, k := range g.pending {
			if k.Service != p.service && pluginKey(k.Name) == p.d.pluginKey && (!g.decidedLocked() || g.removing[k.ID]) {
				other = k.Service
				break
			}
		}
		changed := g.changed
		g.mu.Unlock()
		if other == "" {
			return nil
		}
		if !logged {
			logged = true
			p.log(ctx, log.InfoLevel, "waiting for the plugin of this name, kept at the last shutdown for another service, to be decided or removed",
				"kept.service", other)
		}
		select {
		case <-changed:
		case <-p.closedCh:
			return exec.ErrControllerClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// setBegins is called when swarmkit begins to apply a set of
// assignments, complete or not: its first call is for the secrets.
func (g *restartGuard) setBegins() {
	g.mu.Lock()
	g.complete = false
	g.mu.Unlock()
}

// completeSetBegins is called when swarmkit resets the node's secrets or
// configs: it is applying a complete set of assignments.
func (g *restartGuard) completeSetBegins() {
	g.mu.Lock()
	g.complete = true
	g.mu.Unlock()
}

// tasksApplied is called when swarmkit turns to the node's volumes, after
// it created the Controllers of the assignments' new tasks. After a
// complete set, it decides every kept plugin: claimed by a task of the
// node (its entry leaves the record), or to be removed. It runs on
// swarmkit's worker, which waits for it under its lock, so it only decides
// and writes the record; the removals run on the sweep's goroutine.
func (g *restartGuard) tasksApplied() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.complete {
		return
	}
	g.complete = false
	if g.shuttingDown {
		return // the empty set of the shutdown's leave: everything stays
	}
	l := log.G(context.Background()).WithField("controller", "plugin")
	var remove []keptplugins.Plugin
	next := slices.Clone(g.pending)
	for _, k := range g.pending {
		kl := l.WithFields(log.Fields{"plugin": k.Name, "plugin.id": k.ID, "service": k.Service})
		if c := g.claimantLocked(k); c != nil {
			kl.WithField("task", c.taskID).Info("plugin kept across the restart is in service again")
			next = without(next, k.ID)
			continue
		}
		if k.Service == "" {
			kl.Warn("a kept plugin recorded without a service is left alone; remove it by hand if it is not needed")
			next = without(next, k.ID)
			continue
		}
		if !g.removing[k.ID] {
			remove = append(remove, k)
		}
	}
	if !slices.Equal(next, g.pending) {
		if err := g.saveLocked(next); err != nil {
			l.WithError(err).Error("cannot update the record of plugins kept at the last shutdown")
		}
	}
	if len(remove) > 0 {
		g.startSweepLocked(remove)
	}
	if !g.decidedLocked() {
		close(g.swept)
		g.notifyLocked()
	}
}

// startSweepLocked starts removing ks on the guard's goroutine, after any
// sweep still in flight. The caller holds g.mu.
func (g *restartGuard) startSweepLocked(ks []keptplugins.Plugin) {
	if g.removing == nil {
		g.removing = make(map[string]bool)
	}
	for _, k := range ks {
		g.removing[k.ID] = true
	}
	prev, prevCancel := g.sweepDone, g.sweepCancel
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	g.sweepCancel = func() {
		cancel()
		if prevCancel != nil {
			prevCancel()
		}
	}
	g.sweepDone = done
	go func() {
		defer close(done)
		defer cancel()
		if prev != nil {
			<-prev
		}
		g.sweep(ctx, ks)
	}()
}

// sweep removes the kept plugins ks one after another, each under its
// plugin's lock and with Remove's checks. An entry leaves the record only
// when its plugin is removed (or gone, or no longer its service's); one
// whose removal fails stays recorded and is tried again at the next
// complete set. It stops early when ctx ends.
func (g *restartGuard) sweep(ctx context.Context, ks []keptplugins.Plugin) {
	lctx := log.WithLogger(ctx, log.G(ctx).WithField("controller", "plugin"))
	for i, k := range ks {
		if ctx.Err() != nil {
			g.mu.Lock()
			for _, rest := range ks[i:] {
				delete(g.removing, rest.ID)
			}
			g.notifyLocked()
			g.mu.Unlock()
			return
		}
		err := g.removeKept(lctx, k)
		g.mu.Lock()
		delete(g.removing, k.ID)
		if err == nil {
			if serr := g.saveLocked(without(g.pending, k.ID)); serr != nil {
				log.G(lctx).WithError(serr).Error("cannot update the record of plugins kept at the last shutdown")
			}
		} else {
			level := log.ErrorLevel
			if errors.Is(err, ErrPluginInUse) || ctx.Err() != nil {
				level = log.WarnLevel
			}
			log.G(lctx).WithFields(log.Fields{"plugin": k.Name, "plugin.id": k.ID, "service": k.Service}).WithError(err).
				Log(level, "cannot remove a plugin kept across the restart whose service has no task on the node; trying again at the next complete set of assignments")
		}
		g.notifyLocked()
		g.mu.Unlock()
	}
}

// stopSweep stops the sweep in flight, if any, and waits for it to end.
func (g *restartGuard) stopSweep() {
	g.mu.Lock()
	cancel, done := g.sweepCancel, g.sweepDone
	g.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// leftSwarm is LeftSwarm for the guard's record: it stops the sweep, then
// removes every recorded plugin, and rewrites the record with those it
// could not remove.
func (g *restartGuard) leftSwarm(backend Backend) error {
	g.stopSweep()
	g.mu.Lock()
	pending := slices.Clone(g.pending)
	g.mu.Unlock()
	ctx := log.WithLogger(context.Background(), log.G(context.Background()).WithField("controller", "plugin"))
	var errs []error
	for _, k := range pending {
		if k.Service == "" {
			continue // never a swarm service's: left alone, and forgotten
		}
		gk := &restartGuard{backend: backend}
		if err := gk.removeKept(ctx, k); err != nil {
			errs = append(errs, err)
			continue
		}
		g.mu.Lock()
		_ = g.saveLocked(without(g.pending, k.ID)) // rewritten below too
		g.mu.Unlock()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	remain := slices.DeleteFunc(slices.Clone(g.pending), func(k keptplugins.Plugin) bool { return k.Service == "" })
	if err := g.saveLocked(remain); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeKept removes the kept plugin k unless it is gone or is no longer
// its service's, the checks of Remove; a plugin still in use is
// ErrPluginInUse, and stays recorded.
func (g *restartGuard) removeKept(ctx context.Context, k keptplugins.Plugin) error {
	unlock, err := pluginLocks.lock(ctx, pluginKey(k.Name))
	if err != nil {
		return err
	}
	defer unlock()
	l := log.G(ctx).WithFields(log.Fields{"plugin": k.Name, "plugin.id": k.ID, "service": k.Service})
	if remove, err := g.removable(l, k); !remove || err != nil {
		return err
	}
	// The plugin's lock, held until the removal is done, keeps tasks of
	// the node from binding to it meanwhile, as in Remove.
	if err := g.backend.Remove(k.ID, &backend.PluginRmConfig{ForceRemove: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return classify("error removing plugin "+k.Name, err)
	}
	l.Info("plugin removed: it was kept across the restart, and its service has no task on the node")
	return nil
}

// removable looks the kept plugin k up and reports whether removeKept
// should remove it: it is still its service's and no one holds it (else
// ErrPluginInUse).
func (g *restartGuard) removable(l *log.Entry, k keptplugins.Plugin) (bool, error) {
	holders.mu.Lock()
	defer holders.mu.Unlock()
	pl, err := g.backend.Get(k.ID)
	switch {
	case cerrdefs.IsNotFound(err):
		l.Debug("plugin kept across the restart is gone")
		return false, nil
	case err != nil:
		return false, classify("error looking up plugin "+k.Name, err)
	case pl == nil || pl.GetID() == "":
		return false, withDetail(errBackend, "Get returned neither a plugin nor an error", nil)
	case k.Service == "" || pl.SwarmServiceID != k.Service:
		l.Info("plugin kept across the restart now belongs to someone else; leaving it alone")
		return false, nil
	case pl.GetRefCount() > 0:
		// A volume on the driver, say: Remove would keep it too. It stays
		// recorded, and a later complete set removes it once unused.
		return false, withDetail(ErrPluginInUse, fmt.Sprintf("%s has %d references", k.Name, pl.GetRefCount()), nil)
	}
	return true, nil
}

// restartSafeExecutor is the executor RestartSafe returns.
type restartSafeExecutor struct {
	exec.Executor
	guard *restartGuard
}

func (x *restartSafeExecutor) Controller(t *api.Task) (exec.Controller, error) {
	c, err := x.Executor.Controller(t)
	if p, ok := c.(*Controller); ok && err == nil && p != nil {
		x.guard.watch(p, t.DesiredState)
	}
	return c, err
}

func (x *restartSafeExecutor) Secrets() exec.SecretsManager {
	x.guard.setBegins()
	var m exec.SecretsManager = inertSecrets{}
	if p, ok := x.Executor.(exec.SecretsProvider); ok {
		m = p.Secrets()
	}
	return resetSecrets{m, x.guard}
}

func (x *restartSafeExecutor) Configs() exec.ConfigsManager {
	var m exec.ConfigsManager = inertConfigs{}
	if p, ok := x.Executor.(exec.ConfigsProvider); ok {
		m = p.Configs()
	}
	return resetConfigs{m, x.guard}
}

func (x *restartSafeExecutor) Volumes() exec.VolumesManager {
	x.guard.tasksApplied()
	if p, ok := x.Executor.(exec.VolumesProvider); ok {
		return p.Volumes()
	}
	return inertVolumes{}
}

// resetSecrets and resetConfigs tell the guard when swarmkit resets them,
// which it does at the start of a complete set of assignments.
type resetSecrets struct {
	exec.SecretsManager
	guard *restartGuard
}

func (r resetSecrets) Reset() {
	r.guard.completeSetBegins()
	r.SecretsManager.Reset()
}

type resetConfigs struct {
	exec.ConfigsManager
	guard *restartGuard
}

func (r resetConfigs) Reset() {
	r.guard.completeSetBegins()
	r.ConfigsManager.Reset()
}

// inertSecrets, inertConfigs and inertVolumes stand in for the managers of
// an executor that has none: they hold nothing.
type inertSecrets struct{}

func (inertSecrets) Get(string) (*api.Secret, error) { return nil, nil }
func (inertSecrets) Add(...api.Secret)               {}
func (inertSecrets) Remove([]string)                 {}
func (inertSecrets) Reset()                          {}

type inertConfigs struct{}

func (inertConfigs) Get(string) (*api.Config, error) { return nil, nil }
func (inertConfigs) Add(...api.Config)               {}
func (inertConfigs) Remove([]string)                 {}
func (inertConfigs) Reset()                          {}

type inertVolumes struct{}

func (inertVolumes) Get(string) (string, error)                  { return "", nil }
func (inertVolumes) Add(...api.VolumeAssignment)                 {}
func (inertVolumes) Remove([]api.VolumeAssignment, func(string)) {}
func (inertVolumes) Plugins() exec.VolumePluginManager           { return inertVolumePlugins{} }

type inertVolumePlugins struct{}

func (inertVolumePlugins) NodeInfo(context.Context) ([]*api.NodeCSIInfo, error) { return nil, nil }
