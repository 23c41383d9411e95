package restart

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/docker/docker/api/types/backend"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	"github.com/seed-e85c93d5/plugin/internal/errs"
	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
	"github.com/seed-e85c93d5/plugin/internal/refs"
)

// Guard is the restart safety of one node: its record of kept
// plugins and the plugin Controllers its executor handed out.
//
// Its sweep, the removal of kept plugins no task claimed, runs on a
// goroutine of its own (never on swarmkit's worker, which waits for the
// executor's calls under its lock), one at a time; ShuttingDown, LeftSwarm
// and a later RestartSafe of the same directory stop it.
type Guard struct {
	backend Backend
	file    *keptplugins.File

	mu           sync.Mutex
	shuttingDown bool
	pending      []keptplugins.Plugin   // recorded: kept and not yet claimed, or being removed
	live         map[Task]api.TaskState // the desired state of each one's task when swarmkit asked for it
	complete     bool                   // a complete set of assignments is being applied
	swept        chan struct{}          // closed once the first complete set decided the record
	changed      chan struct{}          // closed and replaced when pending or removing changes
	removing     map[string]bool        // IDs the sweep has not finished with
	sweepCancel  context.CancelFunc     // stops the sweep in flight; nil when none
	sweepDone    chan struct{}          // closed when the sweep in flight ends
}

// watch makes c's Remove keep its plugin after ShuttingDown, and lets c's
// task, whose desired state is desired, claim a kept plugin.
func (g *Guard) watch(c Task, desired api.TaskState) {
	g.mu.Lock()
	g.live[c] = desired
	g.mu.Unlock()
}

// forget drops c: its task is no longer assigned.
func (g *Guard) forget(c Task) {
	g.mu.Lock()
	delete(g.live, c)
	g.mu.Unlock()
}

// claims reports whether c's task, whose desired state is desired, takes
// over the kept plugin k. A task the managers are removing (its service
// was deleted) does not: its Remove would remove the plugin soon, and the
// plugin's name may already be another service's.
func claims(c Task, k keptplugins.Plugin, desired api.TaskState) bool {
	if k.Service == "" || c.Service() != k.Service || desired >= api.TaskStateRemove {
		return false
	}
	return c.BoundID() == k.ID || c.Key() == refs.Key(k.Name)
}

// claimantLocked returns the Controller that takes over k: of those that
// claim it, the one whose task's desired state is lowest (a task meant to
// run before one being shut down, as after a node marked down, where the
// old task is reassigned SHUTDOWN and a new one comes), then by task ID.
// The caller holds g.mu.
func (g *Guard) claimantLocked(k keptplugins.Plugin) Task {
	var best Task
	var bestState api.TaskState
	for c, desired := range g.live {
		if !claims(c, k, desired) {
			continue
		}
		if best == nil || desired < bestState || (desired == bestState && c.TaskID() < best.TaskID()) {
			best, bestState = c, desired
		}
	}
	return best
}

// notifyLocked wakes the Prepares waiting in settled. The caller holds g.mu.
func (g *Guard) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// saveLocked writes pending as the record. The caller holds g.mu.
func (g *Guard) saveLocked(next []keptplugins.Plugin) error {
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
func (g *Guard) shutdown() {
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
		nameOrID := c.BoundID()
		if nameOrID == "" {
			nameOrID = c.Name()
		}
		pl, err := g.backend.Get(nameOrID)
		if err != nil || pl == nil || pl.GetID() == "" || !c.Owns(pl) || c.Service() == "" {
			continue // nothing of the task's service to keep
		}
		next = withKept(next, kept(c, pl))
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
func (g *Guard) decidedLocked() bool {
	select {
	case <-g.swept:
		return true
	default:
		return false
	}
}

// kept is the record of pl, kept for c's task.
func kept(c Task, pl *v2.Plugin) keptplugins.Plugin {
	return keptplugins.Plugin{ID: pl.GetID(), Name: pl.Name(), Service: c.Service(), Task: c.TaskID(), Kept: time.Now().UTC()}
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
func (g *Guard) keep(ctx context.Context, p Task, pl *v2.Plugin) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.shuttingDown || p.Service() == "" {
		return false
	}
	k := kept(p, pl)
	if i := slices.IndexFunc(g.pending, func(o keptplugins.Plugin) bool { return o.ID == k.ID }); i >= 0 && g.pending[i].Service == k.Service {
		return true // recorded by ShuttingDown
	}
	if err := g.saveLocked(withKept(slices.Clone(g.pending), k)); err != nil {
		p.Log(ctx, log.WarnLevel, "cannot record the plugin to keep across the restart; removing it", "error", err.Error())
		return false
	}
	return true
}

// settled returns once a Prepare of p may look at the plugins: at once,
// unless a plugin of p's name was kept for another service and is not
// decided yet (the node's first complete set of assignments has not come)
// or is being removed (the sweep has not finished with it).
func (g *Guard) settled(ctx context.Context, p Task) error {
	logged := false
	for {
		g.mu.Lock()
		other := ""
		for _, k := range g.pending {
			if k.Service != p.Service() && refs.Key(k.Name) == p.Key() && (!g.decidedLocked() || g.removing[k.ID]) {
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
			p.Log(ctx, log.InfoLevel, "waiting for the plugin of this name, kept at the last shutdown for another service, to be decided or removed",
				"kept.service", other)
		}
		select {
		case <-changed:
		case <-p.Closed():
			return exec.ErrControllerClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// setBegins is called when swarmkit begins to apply a set of
// assignments, complete or not: its first call is for the secrets.
func (g *Guard) setBegins() {
	g.mu.Lock()
	g.complete = false
	g.mu.Unlock()
}

// completeSetBegins is called when swarmkit resets the node's secrets or
// configs: it is applying a complete set of assignments.
func (g *Guard) completeSetBegins() {
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
func (g *Guard) tasksApplied() {
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
			kl.WithField("task", c.TaskID()).Info("plugin kept across the restart is in service again")
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
func (g *Guard) startSweepLocked(ks []keptplugins.Plugin) {
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
func (g *Guard) sweep(ctx context.Context, ks []keptplugins.Plugin) {
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
			if errors.Is(err, errs.PluginInUse) || ctx.Err() != nil {
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
func (g *Guard) stopSweep() {
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
func (g *Guard) leftSwarm(backend Backend) error {
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
		gk := &Guard{backend: backend}
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
func (g *Guard) removeKept(ctx context.Context, k keptplugins.Plugin) error {
	held, err := refs.Locks.Lock(ctx, refs.Key(k.Name))
	if err != nil {
		return err
	}
	defer held.Unlock()
	l := log.G(ctx).WithFields(log.Fields{"plugin": k.Name, "plugin.id": k.ID, "service": k.Service})
	if remove, err := g.removable(l, k); !remove || err != nil {
		return err
	}
	// The plugin's lock, held until the removal is done, keeps tasks of
	// the node from binding to it meanwhile, as in Remove.
	if err := g.backend.Remove(k.ID, &backend.PluginRmConfig{ForceRemove: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return errs.Classify("error removing plugin "+k.Name, err)
	}
	l.Info("plugin removed: it was kept across the restart, and its service has no task on the node")
	return nil
}

// removable looks the kept plugin k up and reports whether removeKept
// should remove it: it is still its service's and no one holds it (else
// ErrPluginInUse).
func (g *Guard) removable(l *log.Entry, k keptplugins.Plugin) (bool, error) {
	refs.Holders.Lock()
	defer refs.Holders.Unlock()
	pl, err := g.backend.Get(k.ID)
	switch {
	case cerrdefs.IsNotFound(err):
		l.Debug("plugin kept across the restart is gone")
		return false, nil
	case err != nil:
		return false, errs.Classify("error looking up plugin "+k.Name, err)
	case pl == nil || pl.GetID() == "":
		return false, errs.Detail(errs.Backend, "Get returned neither a plugin nor an error", nil)
	case k.Service == "" || pl.SwarmServiceID != k.Service:
		l.Info("plugin kept across the restart now belongs to someone else; leaving it alone")
		return false, nil
	case pl.GetRefCount() > 0:
		// A volume on the driver, say: Remove would keep it too. It stays
		// recorded, and a later complete set removes it once unused.
		return false, errs.Detail(errs.PluginInUse, fmt.Sprintf("%s has %d references", k.Name, pl.GetRefCount()), nil)
	}
	return true, nil
}
