package plugintest

import (
	"context"
	"errors"
	"fmt"
)

// Health is how an enabled plugin answers the controller's readiness and
// liveness probes (ProbePlugin). The zero value is a healthy plugin that
// answers at once.
type Health struct {
	// ReadyAfter is how many probes after each Enable fail, as a plugin
	// still starting fails them, before it answers.
	ReadyAfter int
	// Hung makes every probe fail, as a plugin that stopped answering,
	// until the plugin is enabled again (a restart heals it) or SetHealth
	// is called again.
	Hung bool
}

// health is the fake's health record of one plugin.
type health struct {
	Health
	probes int // since the last Enable
}

// errHung is the probe error of a Hung plugin.
var errHung = errors.New("Plugin.Activate: the plugin does not answer")

// SetHealth sets how the plugin name (a name, an ID or a unique prefix)
// answers probes from now on; see Health. The count of probes since the
// last Enable starts again. It fails NotFound for an unknown plugin. Safe
// for concurrent use.
func (b *Backend) SetHealth(name string, h Health) error {
	p, err := b.store.GetV2Plugin(name)
	if err != nil {
		return err
	}
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	b.health[p.GetID()] = &health{Health: h}
	return nil
}

// ProbePlugin asks the enabled plugin id whether it answers, as the
// controller's readiness and liveness probes ask a real plugin over its
// socket, and answers as its Health says: a plugin that is still starting
// (ReadyAfter) or Hung fails with an error that says so; an unknown plugin
// fails NotFound; a disabled one fails. Each call is recorded in Calls
// (Method "ProbePlugin", Name id), and a FailNext("ProbePlugin", err) is
// returned as is. It implements the controller's optional
// plugin.PluginProber; moby's Manager has no such method (the controller
// probes its plugins' sockets itself). Safe for concurrent use.
func (b *Backend) ProbePlugin(ctx context.Context, id string) (err error) {
	defer func() { b.record(Call{Method: "ProbePlugin", Name: id, Err: err}) }()
	if err := b.injected("ProbePlugin"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.store.GetV2Plugin(id)
	if err != nil {
		return err
	}
	if !p.IsEnabled() {
		return fmt.Errorf("Plugin.Activate: plugin %s is not enabled", p.Name())
	}
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	h := b.health[p.GetID()]
	if h == nil {
		return nil
	}
	h.probes++
	switch {
	case h.Hung:
		return errHung
	case h.probes <= h.ReadyAfter:
		return fmt.Errorf("Plugin.Activate: still starting (probe %d of the %d it fails)", h.probes, h.ReadyAfter)
	}
	return nil
}

// enabled tells the health record that the plugin id was enabled: a hung
// plugin is healed, and a slow one starts over.
func (b *Backend) enabled(id string) {
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	if h := b.health[id]; h != nil {
		h.probes = 0
		h.Hung = false
	}
}
