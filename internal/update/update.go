// Package update brings a service's installed plugin to a new task's spec:
// the path of the Controller's Prepare when the plugin is already
// installed. It decides before it disables anything whether something
// changes (a new manifest for the remote, a settable env value, the
// grant), and only then disables the plugin, upgrades it or sets its env,
// and enables it again. The Controller's Prepare (and, for ForceDisable,
// its Start) is the only caller, under the plugin's lock.
package update

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/backend"
	"github.com/docker/docker/api/types/registry"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/opencontainers/go-digest"

	"github.com/seed-e85c93d5/plugin/internal/env"
	"github.com/seed-e85c93d5/plugin/internal/errs"
	"github.com/seed-e85c93d5/plugin/internal/logging"
	"github.com/seed-e85c93d5/plugin/internal/pluginspec"
	"github.com/seed-e85c93d5/plugin/internal/privileges"
)

// Backend is what a change needs of the Controller's Backend.
type Backend interface {
	Disable(name string, config *backend.PluginDisableConfig) error
	Enable(name string, config *backend.PluginEnableConfig) error
	Upgrade(ctx context.Context, ref reference.Named, name string, metaHeaders http.Header, authConfig *registry.AuthConfig, privileges types.PluginPrivileges, outStream io.Writer) error
}

// Change is one Prepare's change of the installed plugin; the Controller
// builds it for each call of Apply.
type Change struct {
	Backend Backend
	// Set is the Backend's Setter, nil when it has none: env is then never
	// changed.
	Set func(name string, args []string) error
	// Resolve tells which manifest a tag names now; nil is upstream's
	// rule, a tag is always upgraded.
	Resolve func(ctx context.Context, ref reference.Named, auth *registry.AuthConfig) (digest.Digest, error)
	Task    *pluginspec.Task
	// Auth returns the remote's credentials; called only for a remote
	// that may need an upgrade.
	Auth func(ctx context.Context) (*registry.AuthConfig, error)
	// CheckRemote checks the grant against what the remote's plugin
	// requires, before anything is disabled; CheckInstalled against the
	// installed config.
	CheckRemote    func(ctx context.Context, auth *registry.AuthConfig) error
	CheckInstalled func(pl *v2.Plugin) error
	Progress       io.Writer
	EnableTimeout  int // seconds, for Enable
	// Others is how many references on the plugin are not the service's
	// tasks': a volume that uses the driver, say.
	Others int
	// EnvSkipped is told the keys of the spec's Env the plugin cannot set,
	// at each decision; it logs them once per task.
	EnvSkipped func(ctx context.Context, keys []string)
	Log        logging.Logf
}

// Apply brings the installed plugin pl, to which the task is bound, to the
// spec: nothing at all when nothing changes; otherwise disable, upgrade
// and/or set, and enable again when it was enabled and the spec does not
// say Disabled (else the Controller's Start brings it to the spec's
// state). When anything fails after the disable, a plugin that was
// enabled is enabled again, except when the upgraded config shows a
// privilege the grant lacks: then it stays disabled (security wins).
func (c *Change) Apply(ctx context.Context, pl *v2.Plugin) error {
	wasEnabled := pl.IsEnabled()
	d := c.Task
	_, pinned := d.Remote.(reference.Canonical)
	sameRemote := pl.PluginObj.PluginReference == d.Remote.String()
	upgrade := !pinned || !sameRemote
	var toSet []string
	var auth *registry.AuthConfig
	if upgrade {
		var err error
		if auth, err = c.Auth(ctx); err != nil {
			return err
		}
		// Decide before disabling: is there anything new at the remote?
		if upgrade, err = c.remoteChanged(ctx, auth, pl, sameRemote); err != nil {
			return err
		}
	}
	if upgrade {
		// Refuse an upgrade the grant does not cover before anything is
		// disabled, so the running version stays in service.
		if err := c.CheckRemote(ctx, auth); err != nil {
			return err
		}
	} else {
		if err := c.CheckInstalled(pl); err != nil {
			return err
		}
		if toSet = c.envToSet(ctx, pl); len(toSet) == 0 {
			c.Log(ctx, log.DebugLevel, "plugin already at the remote's manifest with the spec's env; nothing to do")
			return nil
		}
	}

	if err := ForceDisable(ctx, c.Backend, pl, c.Others, d.Display, c.Log); err != nil {
		return err
	}
	err := c.changeDisabled(ctx, pl, upgrade, auth, toSet)
	switch {
	case err != nil && errors.Is(err, errs.IncorrectPrivileges):
		// Only the upgraded config showed it (the registry served other
		// content than it told before): security wins, the plugin stays
		// disabled until a spec that grants what it needs, or an older
		// remote, comes.
		c.Log(ctx, log.ErrorLevel, "plugin left disabled: the upgraded version requires other privileges than the service grants", "reason", err.Error())
	case err != nil && wasEnabled:
		c.reenable(ctx, pl.GetID())
	case err == nil && wasEnabled && !d.Spec.Disabled:
		c.enableChanged(ctx, pl)
	}
	return err
}

// enableChanged enables pl again right after its change, when it was
// enabled before and the spec wants it enabled, so that the outage is the
// Backend's own work only and not also swarmkit's round trip to its
// manager between Prepare and Start (the old task's shutdown, in a
// stop-first update). Start then finds pl enabled and waits for it to
// answer, as after its own enable. If the enable fails, Start enables it
// and reports the error, as it would have without this.
func (c *Change) enableChanged(ctx context.Context, pl *v2.Plugin) {
	if err := c.Backend.Enable(pl.GetID(), &backend.PluginEnableConfig{Timeout: c.EnableTimeout}); err != nil {
		if !pl.IsEnabled() {
			c.Log(ctx, log.WarnLevel, "could not enable plugin after its change; Start enables it", "error", err.Error())
		}
		return
	}
	c.Log(ctx, log.InfoLevel, "plugin enabled after its change")
}

// remoteChanged reports whether the remote names another manifest than
// pl's, so that the change must upgrade, asking Resolve; without Resolve
// it is upstream's rule: always. A registry that cannot be reached leaves
// pl as it is: in service on the installed version when pl is already at
// the spec's remote (one warning), or with a temporary error, nothing
// disabled, when the spec names another remote.
func (c *Change) remoteChanged(ctx context.Context, auth *registry.AuthConfig, pl *v2.Plugin, sameRemote bool) (bool, error) {
	if c.Resolve == nil {
		return true, nil
	}
	d := c.Task
	got, err := c.Resolve(ctx, d.Remote, auth)
	switch {
	case err != nil && ctx.Err() != nil:
		return false, ctx.Err()
	case err != nil && sameRemote:
		c.Log(ctx, log.WarnLevel, "cannot check the remote for a new version; the installed version stays in service", "remote", d.Familiar, "error", err.Error())
		return false, nil
	case err != nil:
		return false, exec.MakeTemporary(errs.Classify(fmt.Sprintf("cannot check plugin %s's new remote %s; the installed version stays in service", d.Display, d.Familiar), err))
	case sameRemote && got == pl.Manifest:
		c.Log(ctx, log.DebugLevel, "the remote names the installed manifest: no upgrade")
		return false, nil
	}
	return true, nil
}

// changeDisabled sets env on the disabled plugin pl, or, if upgrade is set,
// upgrades it and then sets the env entries of the spec that the new
// config lets it take.
func (c *Change) changeDisabled(ctx context.Context, pl *v2.Plugin, upgrade bool, auth *registry.AuthConfig, toSet []string) error {
	d := c.Task
	if upgrade {
		// A copy of the grant: docker v28's Manager sorts it in place.
		if err := c.Backend.Upgrade(ctx, d.Remote, d.Spec.Name, nil, auth, slices.Clone(d.Granted), c.Progress); err != nil {
			if refused := privileges.Refused(err, d.Display, d.Familiar); refused != nil {
				return refused
			}
			return errs.Classify(fmt.Sprintf("error upgrading plugin %s to %s", d.Display, d.Familiar), err)
		}
		c.Log(ctx, log.InfoLevel, "plugin upgraded", "remote", d.Familiar)
		if err := c.CheckInstalled(pl); err != nil {
			return err
		}
		// The config is now the new remote's: decide from it.
		toSet = c.envToSet(ctx, pl)
	}
	if len(toSet) == 0 {
		return nil
	}
	if err := c.Set(pl.GetID(), toSet); err != nil {
		return errs.Classify(fmt.Sprintf("error setting env of plugin %s", d.Display), err)
	}
	c.Log(ctx, log.InfoLevel, "plugin env updated", "env.keys", fmt.Sprint(env.Keys(toSet)))
	return nil
}

// envToSet returns the entries of the spec's Env that differ from pl's
// settings and that the Backend's Set accepts: none without Set, and
// otherwise the "KEY=VALUE" entries whose key pl's config declares with a
// settable value, the rule of moby's v2.Plugin.Set.
func (c *Change) envToSet(ctx context.Context, pl *v2.Plugin) []string {
	if c.Set == nil {
		return nil
	}
	settable, skipped := env.Settable(pl.PluginObj.Config.Env, env.LastPerKey(c.Task.Spec.Env))
	if len(skipped) > 0 && c.EnvSkipped != nil {
		c.EnvSkipped(ctx, skipped)
	}
	return env.Missing(pl.PluginObj.Settings.Env, settable)
}

// reenable restores a plugin that the change disabled before it failed.
func (c *Change) reenable(ctx context.Context, id string) {
	err := c.Backend.Enable(id, &backend.PluginEnableConfig{Timeout: c.EnableTimeout})
	if err != nil {
		c.Log(ctx, log.WarnLevel, "could not re-enable plugin after a failed change", "error", err.Error())
		return
	}
	c.Log(ctx, log.InfoLevel, "plugin re-enabled after a failed change")
}

// ForceDisable disables an enabled plugin so that it can be upgraded or
// reconfigured (or, from Start, because its spec says Disabled). The
// Manager refuses a plain Disable while any reference exists, and the
// service's own tasks hold references, so the disable is forced, as stock
// dockerd does; others is how many references besides the service's tasks
// are torn away for the change (logged at warn when any). name is the
// plugin's name for the error.
func ForceDisable(ctx context.Context, b Backend, pl *v2.Plugin, others int, name string, logf logging.Logf) error {
	if !pl.IsEnabled() {
		return nil
	}
	if err := b.Disable(pl.GetID(), &backend.PluginDisableConfig{ForceDisable: true}); err != nil {
		if !pl.IsEnabled() {
			return nil // someone else disabled it meanwhile
		}
		return errs.Classify(fmt.Sprintf("cannot disable plugin %s to change it", name), err)
	}
	if others > 0 {
		logf(ctx, log.WarnLevel, "plugin disabled for a change while other users hold it", "references", strconv.Itoa(others))
	} else {
		logf(ctx, log.InfoLevel, "plugin disabled")
	}
	return nil
}
