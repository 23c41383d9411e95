package plugintest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/plugin"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/pubsub"
	"github.com/opencontainers/go-digest"
)

// Backend is an in-memory fake of moby's *plugin.Manager. It implements the
// seven methods of the controller's Backend interface, Set, Privileges and
// ResolveManifest;
// see the package documentation for what it mirrors and where it differs.
//
// Create it with NewBackend. All methods are safe for concurrent use.
type Backend struct {
	// mu serialises the state changes (Pull, Upgrade, Enable, Disable,
	// Remove, Set) and guards remotes. Lookups go through store, which has
	// its own lock; the store is only written with mu held.
	mu      sync.Mutex
	store   *plugin.Store
	remotes map[string]remote

	publisher *pubsub.Publisher

	subMu      sync.Mutex
	subs       int           // active subscriptions
	subChanged chan struct{} // closed and replaced when subs changes

	rule PrivilegeRule // guarded by mu

	healthMu sync.Mutex
	health   map[string]*health // by plugin ID; see SetHealth

	recMu    sync.Mutex
	calls    []Call
	failures map[string][]error
}

// NewBackend returns an empty Backend, ready to use: no plugin installed,
// no remote registered (every reference can be pulled, see AddRemote).
func NewBackend() *Backend {
	return &Backend{
		store:      plugin.NewStore(),
		remotes:    make(map[string]remote),
		publisher:  pubsub.NewPublisher(0, 0), // as moby's NewManager
		subChanged: make(chan struct{}),
		failures:   make(map[string][]error),
		rule:       defaultPrivilegeRule,
		health:     make(map[string]*health),
	}
}

// Get returns the installed plugin whose full ID, name or unique ID prefix
// is name, resolved by moby's own plugin.Store: a name is normalised ("vol"
// finds "vol:latest"), an unknown plugin, an invalid or canonical reference
// and "" fail NotFound with "plugin %q not found", and a prefix shared by
// several IDs fails InvalidParameter with "multiple plugins found for %q".
//
// As in moby, every Get of a plugin returns the same *v2.Plugin until it is
// removed, so Acquire, Release and GetRefCount on it share one reference
// count; read its state through IsEnabled, GetID and the other locking
// accessors. Part of plugin.Backend; safe for concurrent use.
func (b *Backend) Get(name string) (p *v2.Plugin, err error) {
	defer func() { b.record(Call{Method: "Get", Name: name, Err: err}) }()
	if err := b.injected("Get"); err != nil {
		return nil, err
	}
	return b.store.GetV2Plugin(name)
}

// Plugin returns a deep copy of the PluginObj of the plugin Get(name) would
// return, and its reference count, read without racing with the Backend or
// with the code under test. It is Snapshot without the owning service. It
// is a test helper: it is neither recorded nor affected by FailNext. Safe
// for concurrent use.
func (b *Backend) Plugin(name string) (types.Plugin, int, error) {
	s, err := b.Snapshot(name)
	return s.Plugin, s.Refs, err
}

// Snapshot is a copy of an installed plugin's state, as Backend.Snapshot
// returns it. It shares no memory with the Backend, so a test may keep and
// modify it.
type Snapshot struct {
	// Plugin is the plugin's API object (ID, Name, Enabled, Settings,
	// Config, PluginReference), deep-copied: what moby's Manager shows in
	// its events and in docker plugin inspect.
	types.Plugin
	// SwarmServiceID is the ID of the swarm service that owns the plugin,
	// set by the plugin.WithSwarmService option of the Pull that installed
	// it (the controller passes it); "" for a plugin installed without
	// it. A controller removes only a plugin its task's service owns.
	SwarmServiceID string
	// Refs is the plugin's reference count (v2.Plugin.GetRefCount): the
	// Acquires not yet released, one per task that holds the plugin when
	// the controller drives it.
	Refs int
}

// Snapshot returns a copy of the plugin Get(name) would return: its API
// object, the service that owns it and its reference count. It reads them
// without racing with the Backend or with the code under test, so a test
// may call it while controllers run. An unknown name fails as Get does
// (NotFound). It is a test helper: it is neither recorded nor affected by
// FailNext. Safe for concurrent use.
func (b *Backend) Snapshot(name string) (Snapshot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return Snapshot{}, err
	}
	s := snapshotOf(p)
	s.Refs = p.GetRefCount() // takes the plugin's lock itself
	return s, nil
}

// Pull installs the plugin ref resolves to under name, disabled, as moby's
// Manager.Pull does: name is normalised ("vol" becomes "vol:latest"), an
// invalid name fails InvalidParameter, an existing one fails with "plugin
// NAME already exists" (classified both InvalidParameter and Conflict, as
// moby wraps it), the granted privileges must be those the remote requires
// ("incorrect privileges", unclassified like moby's), a MissingRemote fails
// NotFound. The new plugin gets a random 64-hex ID, the remote's config,
// settings initialised from it, then opts applied in order (e.g.
// plugin.WithSwarmService, plugin.WithEnv), and PluginReference set to
// ref.String(). It publishes plugin.EventCreate.
//
// metaHeaders, authConfig and outStream are only recorded (Call.MetaHeaders,
// Call.Auth, Call.Out); nothing is written to outStream.
// Pull fails if ctx is already done. Part of plugin.Backend; safe for
// concurrent use.
func (b *Backend) Pull(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer, opts ...plugin.CreateOpt) (err error) {
	requested := name
	defer func() {
		b.record(Call{
			Method: "Pull", Name: requested, Ref: ref.String(), Privileges: copyPrivileges(privileges), Out: outStream,
			Auth: authConfig, MetaHeaders: metaHeaders, Opts: len(opts), Err: err,
		})
	}()
	if err := b.injected("Pull"); err != nil {
		return err
	}

	nameref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return fmt.Errorf("failed to parse %q: %w", name, errdefs.InvalidParameter(err))
	}
	name = reference.FamiliarString(reference.TagNameOnly(nameref))

	b.mu.Lock()
	defer b.mu.Unlock()

	if err := b.validateName(name); err != nil {
		return errdefs.InvalidParameter(err)
	}
	r, err := b.fetch(ctx, ref)
	if err != nil {
		return err
	}
	if err := b.checkPrivileges(r.required(), privileges); err != nil {
		return err
	}

	p := &v2.Plugin{
		PluginObj: types.Plugin{
			Name:   name,
			ID:     newPluginID(),
			Config: r.config(),
		},
		Manifest: r.Digest,
	}
	p.Config = configDigest(p.PluginObj.Config)
	p.InitEmptySettings()
	for _, o := range opts {
		o(p)
	}
	p.PluginObj.PluginReference = ref.String()

	if err := b.store.Add(p); err != nil {
		return err // an ID collision; as unlikely as in moby
	}
	b.publish(plugin.EventCreate{Plugin: snapshot(p)})
	return nil
}

// validateName mirrors moby's Store.validateName. Call with b.mu held.
func (b *Backend) validateName(name string) error {
	// The store's map is only written with b.mu held, so reading it here
	// is safe; names never change once a plugin is added.
	for _, p := range b.store.GetAll() {
		if p.Name() == name {
			return alreadyExistsError(name)
		}
	}
	return nil
}

// fetch plays the registry round trip of Pull and Upgrade.
func (b *Backend) fetch(ctx context.Context, ref reference.Named) (Remote, error) {
	if err := ctx.Err(); err != nil {
		return Remote{}, fmt.Errorf("error resolving plugin reference: %w", err)
	}
	return b.resolve(ref)
}

// configDigest stands for the digest of the config blob moby stores in
// v2.Plugin.Config.
func configDigest(c types.PluginConfig) digest.Digest {
	return digest.FromString(fmt.Sprintf("%+v", c))
}

// Upgrade replaces the config of the installed plugin name with the one ref
// resolves to, as moby's Manager.Upgrade does: the plugin keeps its ID, its
// reference count and its settings (Settings.Env included: only the config
// defaults change); its PluginReference becomes ref.String() and its
// Manifest the remote's digest. It refuses an enabled plugin (Conflict,
// "plugin must be disabled before upgrading: plugin NAME is enabled"), an
// unknown one (NotFound), a name that is not a valid reference, such as a
// full ID (InvalidParameter, as in moby), privileges other than the
// required ones ("incorrect privileges") and a MissingRemote (NotFound). It
// does not check the reference count and publishes no event, like moby.
//
// metaHeaders, authConfig and outStream are only recorded (Call.MetaHeaders,
// Call.Auth, Call.Out); nothing is written to outStream.
// Part of plugin.Backend; safe for concurrent use.
func (b *Backend) Upgrade(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer) (err error) {
	defer func() {
		b.record(Call{
			Method: "Upgrade", Name: name, Ref: ref.String(), Privileges: copyPrivileges(privileges), Out: outStream,
			Auth: authConfig, MetaHeaders: metaHeaders, Err: err,
		})
	}()
	if err := b.injected("Upgrade"); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return err
	}
	if p.IsEnabled() {
		return fmt.Errorf("plugin must be disabled before upgrading: %w", enabledError(p.Name()))
	}
	if _, err := reference.ParseNormalizedNamed(name); err != nil {
		return fmt.Errorf("failed to parse %q: %w", name, errdefs.InvalidParameter(err))
	}
	r, err := b.fetch(ctx, ref)
	if err != nil {
		return err
	}
	if err := b.checkPrivileges(r.required(), privileges); err != nil {
		return err
	}

	config := r.config()
	mu := pluginMu(p)
	mu.Lock()
	p.PluginObj.Config = config
	p.Config = configDigest(config)
	p.Manifest = r.Digest
	p.PluginObj.PluginReference = ref.String()
	mu.Unlock()
	return nil
}

// Privileges returns the privileges the plugin that ref resolves to
// requires, as moby's Manager.Privileges does: computed from the remote's
// config (see Remote.Privileges), in moby's order and words. Like the
// Manager of docker v28.3.0 and moby v2, it answers empty privileges and a
// nil error when the fetch fails (a MissingRemote, a done ctx), so an empty
// answer does not mean that none are needed. A FailNext("Privileges", err)
// is returned as is. It changes nothing. It implements the controller's
// optional plugin.Privileger; safe for concurrent use.
func (b *Backend) Privileges(ctx context.Context, ref reference.Named, metaHeaders http.Header, authConfig *registry.AuthConfig) (privs types.PluginPrivileges, err error) {
	defer func() {
		b.record(Call{
			Method: "Privileges", Ref: ref.String(), Privileges: copyPrivileges(privs),
			Auth: authConfig, MetaHeaders: metaHeaders, Err: err,
		})
	}()
	if err := b.injected("Privileges"); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r, err := b.fetch(ctx, ref)
	if err != nil {
		return types.PluginPrivileges{}, nil // moby's answer to a failed fetch
	}
	return r.required(), nil
}

// ResolveManifest returns the manifest digest ref names now: the Digest
// of the remote registered for it (see Remote.Digest), as a registry
// answers a manifest request, without installing anything. A MissingRemote
// fails NotFound, a done ctx fails with its error, and a
// FailNext("ResolveManifest", err) is returned as is (a registry that
// cannot be reached, say). It changes nothing. It implements the
// controller's optional plugin.ManifestResolver; moby's Manager has no such
// method. Safe for concurrent use.
func (b *Backend) ResolveManifest(ctx context.Context, ref reference.Named, authConfig *registry.AuthConfig) (d digest.Digest, err error) {
	defer func() {
		b.record(Call{Method: "ResolveManifest", Ref: ref.String(), Auth: authConfig, Err: err})
	}()
	if err := b.injected("ResolveManifest"); err != nil {
		return "", err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r, err := b.fetch(ctx, ref)
	if err != nil {
		return "", err
	}
	return r.Digest, nil
}

// setEnabled flips the plugin's state under its own lock (see race.go).
func setEnabled(p *v2.Plugin, enabled bool) {
	mu := pluginMu(p)
	mu.Lock()
	p.PluginObj.Enabled = enabled
	mu.Unlock()
}

// Enable marks the plugin name (full ID, name or unique ID prefix, as Get)
// enabled and publishes plugin.EventEnable, as moby's Manager.Enable does,
// without starting anything and without moby's 500 ms wait. It fails
// Conflict with "plugin already enabled: plugin NAME is enabled" if it is
// enabled already, and as Get for an unknown plugin. config.Timeout is
// applied with SetTimeout; a nil config panics, as it does in moby.
// Part of plugin.Backend; safe for concurrent use.
func (b *Backend) Enable(name string, config *backend.PluginEnableConfig) (err error) {
	defer func() { b.record(Call{Method: "Enable", Name: name, Config: config, Err: err}) }()
	if err := b.injected("Enable"); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return err
	}
	if config == nil {
		panic("plugintest: Enable with a nil *backend.PluginEnableConfig (moby's Manager dereferences it)")
	}
	if p.IsEnabled() {
		return fmt.Errorf("plugin already enabled: %w", enabledError(p.Name()))
	}
	p.SetTimeout(time.Duration(config.Timeout) * time.Second)
	setEnabled(p, true)
	b.enabled(p.GetID())
	b.publish(plugin.EventEnable{Plugin: snapshot(p)})
	return nil
}

// Disable marks the plugin name disabled and publishes plugin.EventDisable,
// as moby's Manager.Disable does. Unless config.ForceDisable is set, it
// refuses a plugin whose reference count is above 0 (Conflict, "plugin NAME
// is in use"); that check comes first. A disabled plugin fails Conflict
// with "plugin is already disabled: plugin NAME found but disabled"; an
// unknown one as Get. A nil config panics, as it does in moby.
// Part of plugin.Backend; safe for concurrent use.
func (b *Backend) Disable(name string, config *backend.PluginDisableConfig) (err error) {
	defer func() { b.record(Call{Method: "Disable", Name: name, Config: config, Err: err}) }()
	if err := b.injected("Disable"); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return err
	}
	if config == nil {
		panic("plugintest: Disable with a nil *backend.PluginDisableConfig (moby's Manager dereferences it)")
	}
	if !config.ForceDisable && p.GetRefCount() > 0 {
		return inUseError(p.Name())
	}
	if !p.IsEnabled() {
		return fmt.Errorf("plugin is already disabled: %w", errDisabled(p.Name()))
	}
	setEnabled(p, false)
	b.publish(plugin.EventDisable{Plugin: snapshot(p)})
	return nil
}

// Remove uninstalls the plugin name and publishes plugin.EventRemove, as
// moby's Manager.Remove does. Unless config.ForceRemove is set, it refuses
// a plugin in use (reference count above 0: Conflict, "plugin NAME is in
// use") or enabled (Conflict, "plugin NAME is enabled"). A forced Remove of
// an enabled plugin disables it first without publishing EventDisable, as
// moby does; the EventRemove shows it disabled. An unknown plugin fails as
// Get. After Remove, Get no longer finds the plugin, but *v2.Plugin values
// obtained earlier stay usable. A nil config panics, as it does in moby.
// Part of plugin.Backend; safe for concurrent use.
func (b *Backend) Remove(name string, config *backend.PluginRmConfig) (err error) {
	defer func() { b.record(Call{Method: "Remove", Name: name, Config: config, Err: err}) }()
	if err := b.injected("Remove"); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return err
	}
	if config == nil {
		panic("plugintest: Remove with a nil *backend.PluginRmConfig (moby's Manager dereferences it)")
	}
	if !config.ForceRemove {
		if p.GetRefCount() > 0 {
			return inUseError(p.Name())
		}
		if p.IsEnabled() {
			return enabledError(p.Name())
		}
	}
	if p.IsEnabled() {
		setEnabled(p, false)
	}
	b.store.Remove(p)
	b.publish(plugin.EventRemove{Plugin: snapshot(p)})
	return nil
}

// Set changes settings of the plugin name, as moby's Manager.Set does, by
// calling v2.Plugin.Set itself: args are "NAME=VALUE" (or
// "NAME.FIELD=VALUE"), NAME must be a settable env, mount, device or args
// of the plugin config, and an enabled plugin is refused ("cannot set on an
// active plugin, disable plugin before setting"). A remote's Env entries
// are settable values; its FixedEnv entries are refused (`"NAME" is not
// settable`), and so is a NAME the config does not declare, including an
// arg without "=" (`setting "NAME" not found in the plugin
// configuration`). These errors are unclassified, as in moby. An unknown
// plugin fails as Get. It publishes no event.
//
// Implements the controller's optional Setter; safe for concurrent use.
func (b *Backend) Set(name string, args []string) (err error) {
	defer func() {
		b.record(Call{Method: "Set", Name: name, Args: slices.Clone(args), Err: err})
	}()
	if err := b.injected("Set"); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()

	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return err
	}
	return p.Set(args) // takes the plugin's own lock
}

// newPluginID returns a new random plugin ID the way moby's Manager makes
// one (pkg/stringid in docker/docker, internal in moby v2): 64 hex digits
// whose 12-digit short form is not all numeric.
func newPluginID() string {
	b := make([]byte, 32)
	for {
		if _, err := rand.Read(b); err != nil {
			panic("plugintest: reading random bytes: " + err.Error())
		}
		id := hex.EncodeToString(b)
		if strings.Trim(id[:12], "0123456789") != "" {
			return id
		}
	}
}
