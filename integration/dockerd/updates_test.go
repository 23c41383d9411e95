//go:build linux

package dockerd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
)

// Issue 25's updates without needless outages, on real daemons: (l) a
// forced update that changes nothing, (m) an env-only update, (n) an
// upgrade through a throttled registry, (o) a forced update while the
// registry is down, (p) a spec with a repeated env key. Each measures how
// long the plugin is out of service during the update by polling
// PluginInspect every pollInterval (watchOutage), and notes it on the step
// that makes the update, so that the table shows it for every daemon. The
// steps that make an update pass on every daemon unless the update fails;
// the steps after them judge what was measured, and are where stock fails.

const (
	// stepForcedNothingDisabled is the step of (l) where stock fails: it
	// disables and upgrades the plugin for every new task.
	stepForcedNothingDisabled = "never disabled, same plugin ID, no blob"
	// stepRepeatedNeverDisabled is the step of (p) where stock fails.
	// stepEnvOnlyManagerWork is the step of (m) that compares the
	// update's outage with the Manager's own work.
	stepEnvOnlyManagerWork    = "outage no longer than the Manager's disable, set and enable by hand"
	stepRepeatedNeverDisabled = "never disabled, env stays " + settableEnv + "=2"
	// stepRegistryDownKept is the step of (o) where stock fails: it
	// disables the plugin, fails to upgrade it and leaves it disabled
	// until the registry is back.
	stepRegistryDownKept = "never disabled while down, task RUNNING on the installed version"

	// envOnlyOutageBound is a sanity bound on the outage of (m)'s
	// env-only update; the step compares it with the Manager's own
	// disable, set and enable, made by hand (Enable alone sleeps about
	// 500 ms). Before the fork enabled the changed plugin within Prepare,
	// Start enabled it, and in a stop-first update Start comes only once
	// the old task has stopped, about 1.1 s after Prepare: 1.6–1.7 s in all.
	envOnlyOutageBound = 2500 * time.Millisecond
	// pollSlack is what polling every 100 ms can add to a measured outage:
	// up to one interval at each end, and the inspect calls' own time.
	pollSlack = 300 * time.Millisecond
	// registryDownFor is how long (o) keeps the registry down.
	registryDownFor = 20 * time.Second
	// paddingSize is the incompressible padding in (n)'s :big rootfs.
	paddingSize = 10 << 20
	// throttleRate is the rate at which (n)'s registry serves blobs.
	throttleRate = 1 << 20 // bytes per second
)

// outage is what polling a plugin saw of its time out of service, that is
// disabled or not installed: how many times it went out and for how long
// in total. An interval runs from the first poll that saw the plugin out
// of service to the first that saw it back (so each end is known within
// a poll, pollInterval); one still open when polling stops ends then.
type outage struct {
	polls     int
	intervals int
	total     time.Duration
	longest   time.Duration
	absent    int      // polls that found no plugin
	ids       []string // the plugin IDs seen, in order
	envs      []string // the distinct Settings.Env seen, in order
	outAtEnd  bool     // still out of service when polling stopped
	failed    int      // polls whose API call failed
	lastErr   error

	outSince time.Time // zero while in service
}

// see records one poll's answer at time at: p is the plugin, nil if not
// installed.
func (o *outage) see(at time.Time, p *types.Plugin) {
	o.polls++
	if p == nil {
		o.absent++
	} else {
		if !slices.Contains(o.ids, p.ID) {
			o.ids = append(o.ids, p.ID)
		}
		if env := fmt.Sprintf("%q", p.Settings.Env); !slices.Contains(o.envs, env) {
			o.envs = append(o.envs, env)
		}
	}
	switch out := p == nil || !p.Enabled; {
	case out && o.outSince.IsZero():
		o.intervals++
		o.outSince = at
	case !out && !o.outSince.IsZero():
		o.closeInterval(at)
	}
}

// fail records a poll whose API call failed.
func (o *outage) fail(err error) {
	o.polls++
	o.failed++
	o.lastErr = err
}

func (o *outage) closeInterval(at time.Time) {
	d := at.Sub(o.outSince)
	o.total += d
	o.longest = max(o.longest, d)
	o.outSince = time.Time{}
}

// finish ends polling at time at.
func (o *outage) finish(at time.Time) {
	if !o.outSince.IsZero() {
		o.outAtEnd = true
		o.closeInterval(at)
	}
}

// neverOut reports nil if every poll answered and saw the plugin enabled,
// always the plugin with ID id.
func (o outage) neverOut(id string) error {
	switch {
	case o.failed > 0:
		return fmt.Errorf("%d of %d polls failed, last: %v", o.failed, o.polls, o.lastErr)
	case o.intervals > 0:
		return fmt.Errorf("the plugin was out of service: %s", o)
	case len(o.ids) != 1 || o.ids[0] != id:
		return fmt.Errorf("plugin IDs seen %.12q, want only %.12s", o.ids, id)
	}
	return nil
}

func (o outage) String() string {
	s := fmt.Sprintf("disabled %d ms in %d interval(s)", o.total.Milliseconds(), o.intervals)
	if o.intervals > 1 {
		s += fmt.Sprintf(" (longest %d ms)", o.longest.Milliseconds())
	}
	s += fmt.Sprintf(", %d polls", o.polls)
	if o.absent > 0 {
		s += fmt.Sprintf(", %d found no plugin", o.absent)
	}
	if o.outAtEnd {
		s += ", still out of service at the end"
	}
	if o.failed > 0 {
		s += fmt.Sprintf(", %d failed (%v)", o.failed, o.lastErr)
	}
	return s
}

// pollPlugin inspects the plugin called name once and records the answer
// in o. It reports false if ctx has ended.
func (s *scenarioRun) pollPlugin(ctx context.Context, name string, o *outage) bool {
	p, _, err := s.d.Client.PluginInspectWithRaw(ctx, name)
	switch {
	case ctx.Err() != nil:
		return false
	case err == nil:
		o.see(time.Now(), p)
	case cerrdefs.IsNotFound(err):
		o.see(time.Now(), nil)
	default:
		o.fail(err)
	}
	return true
}

// outageWatch polls a plugin in the background.
type outageWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	o      outage
}

// watchOutage polls the plugin called name every pollInterval until stop,
// the first time before it returns.
func (s *scenarioRun) watchOutage(ctx context.Context, name string) *outageWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &outageWatch{cancel: cancel, done: make(chan struct{})}
	s.pollPlugin(ctx, name, &w.o)
	go func() {
		defer close(w.done)
		tick := time.NewTicker(pollInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if !s.pollPlugin(ctx, name, &w.o) {
				return
			}
		}
	}()
	return w
}

// stop stops polling and returns what the polls saw.
func (w *outageWatch) stop() outage {
	w.cancel()
	<-w.done
	w.o.finish(time.Now())
	return w.o
}

// pullCounter is a registry that counts the requests of pulls.
type pullCounter interface{ pulls() pulls }

// measuredUpdate is what measureUpdate saw of one service update.
type measuredUpdate struct {
	id, oldTask, newTask string // the plugin's ID before; the newest task before and after
	out                  outage
	pulls                pulls // the registry's pull requests during the update
	disables             int   // disable events of the plugin since the update
	took                 time.Duration
}

// measureUpdate makes a service update with update (which returns the time
// just before it), polls the plugin called name throughout (watchOutage),
// and returns once the update has completed and the plugin is in the state
// want with a new task RUNNING (desired RUNNING; not necessarily the
// newest: tasks that failed may have been replaced after it). It notes the
// outage, the registry's pull requests (reg) and the daemon's disable
// events of the plugin during the update on the step in progress.
func (s *scenarioRun) measureUpdate(ctx context.Context, name string, reg pullCounter, want pluginWant, update func(context.Context) (time.Time, error)) (*measuredUpdate, error) {
	before := s.observe(ctx, name)
	if before.err != nil || before.plugin == nil || before.newestTask() == nil {
		return nil, fmt.Errorf("no plugin or task before the update: %s", before)
	}
	m := &measuredUpdate{id: before.plugin.ID, oldTask: before.newestTask().ID}
	pulls0 := reg.pulls()
	w := s.watchOutage(ctx, name)
	start := time.Now()
	since, err := update(ctx)
	if err == nil {
		err = s.waitUpdate(ctx, since, name)
	}
	var last observed
	if err == nil {
		err = poll(ctx, fmt.Sprintf("plugin %s %+v with a new RUNNING task", name, want), func(ctx context.Context) (bool, string, error) {
			last = s.observe(ctx, name)
			if p := last.plugin; p == nil || p.Enabled != want.enabled || (want.remote != "" && p.PluginReference != want.remote) {
				return false, last.String(), nil
			}
			for _, t := range last.tasks {
				if t.ID != m.oldTask && t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning {
					m.newTask = t.ID
					return true, last.String(), nil
				}
			}
			return false, last.String(), nil
		})
	}
	m.out, m.took = w.stop(), time.Since(start)
	// More than one task since the update (one failed, another replaced
	// it): list them all.
	var newTasks []string
	for _, t := range last.tasks {
		if t.ID == m.oldTask || t.CreatedAt.Before(since) {
			continue
		}
		desc := fmt.Sprintf("%.10s %s/%s", t.ID, t.Status.State, t.DesiredState)
		if t.Status.Err != "" {
			desc += fmt.Sprintf(" %q", t.Status.Err)
		}
		newTasks = append(newTasks, desc)
	}
	if len(newTasks) > 1 {
		s.notef("%d tasks since the update, newest first: %s", len(newTasks), strings.Join(newTasks, "; "))
	}
	p := reg.pulls()
	m.pulls = pulls{manifests: p.manifests - pulls0.manifests, blobs: p.blobs - pulls0.blobs}
	if err != nil {
		s.notef("%s; the registry got %s", m.out, m.pulls)
		return m, err
	}
	disables, err := s.pluginEvents(ctx, since, m.id, events.ActionDisable)
	if err != nil {
		return m, err
	}
	enables, err := s.pluginEvents(ctx, since, m.id, events.ActionEnable)
	if err != nil {
		return m, err
	}
	m.disables = len(disables)
	gap := ""
	if len(disables) > 0 && len(enables) > 0 {
		gap = fmt.Sprintf(" (daemon events: disable to enable %d ms)", (enables[len(enables)-1].TimeNano-disables[0].TimeNano)/1e6)
	}
	s.notef("%s; %d disable event(s)%s; the registry got %s; update to a new RUNNING task %.1f s; Settings.Env %s", m.out, m.disables, gap, m.pulls, m.took.Seconds(), strings.Join(m.out.envs, " then "))
	return m, nil
}

// forceUpdate makes a forced update of the scenario's service to spec
// (TaskTemplate.ForceUpdate incremented, as `docker service update
// --force` does) and returns the time just before it.
func (s *scenarioRun) forceUpdate(ctx context.Context, p runtime.PluginSpec) (time.Time, error) {
	return s.updateServiceWith(ctx, p, func(spec *swarm.ServiceSpec, current swarm.Service) {
		spec.TaskTemplate.ForceUpdate = current.Spec.TaskTemplate.ForceUpdate + 1
	})
}

// updateServiceWith is updateService with edit applied to the new spec,
// given the service as it is.
func (s *scenarioRun) updateServiceWith(ctx context.Context, p runtime.PluginSpec, edit func(*swarm.ServiceSpec, swarm.Service)) (time.Time, error) {
	svc, _, err := s.d.Client.ServiceInspectWithRaw(ctx, s.svcID, swarm.ServiceInspectOptions{})
	if err != nil {
		return time.Time{}, err
	}
	spec := s.serviceSpec(p)
	edit(&spec, svc)
	before := time.Now().Round(0)
	_, err = s.d.Client.ServiceUpdate(ctx, s.svcID, svc.Version, spec, swarm.ServiceUpdateOptions{})
	return before, err
}

// forcedUpdateNothingChanged is (l): a forced update of a service whose
// spec and tag did not change. The fork's new task finds the tag still
// naming the installed manifest and keeps the plugin in service: never
// disabled at any poll, the same plugin ID, no disable event, no blob
// request. Stock disables and upgrades it.
func forcedUpdateNothingChanged(s *scenarioRun) {
	const name = "vol-l"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1}
	s.createStep("create", spec, pluginWant{enabled: true, remote: s.plugins.v1})
	var m *measuredUpdate
	s.step("forced update", func(ctx context.Context) (err error) {
		m, err = s.measureUpdate(ctx, name, s.reg, pluginWant{enabled: true, remote: s.plugins.v1}, func(ctx context.Context) (time.Time, error) {
			return s.forceUpdate(ctx, spec)
		})
		return err
	})
	s.step(stepForcedNothingDisabled, func(context.Context) error {
		return m.nothingTakenOut()
	})
	s.removeStep("remove", name)
}

// nothingTakenOut checks that the update took nothing out of service: the
// plugin enabled at every poll with its ID, no disable event, no blob
// request.
func (m *measuredUpdate) nothingTakenOut() error {
	if err := m.out.neverOut(m.id); err != nil {
		return err
	}
	if m.disables > 0 {
		return fmt.Errorf("%d disable event(s) of plugin %.12s", m.disables, m.id)
	}
	if m.pulls.blobs > 0 {
		return fmt.Errorf("the registry got %s: something was pulled", m.pulls)
	}
	return nil
}

// envOnlyUpdate is (m): VERSION=1 → VERSION=7, a declared, settable key,
// as (b), measured. The fork disables, sets and enables the plugin once,
// within envOnlyOutageBound (see there why not the Manager's Set and
// Enable alone), and does not upgrade it: the registry gets no blob
// request. Stock drops the change, as in (b).
func envOnlyUpdate(s *scenarioRun) {
	const name = "vol-m"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1, Env: []string{settableEnv + "=1"}}
	s.createStep("create "+settableEnv+"=1", spec, pluginWant{enabled: true, env: spec.Env})
	spec.Env = []string{settableEnv + "=7"}
	var m *measuredUpdate
	s.step("update to "+settableEnv+"=7", func(ctx context.Context) (err error) {
		m, err = s.measureUpdate(ctx, name, s.reg, pluginWant{enabled: true}, func(ctx context.Context) (time.Time, error) {
			return s.updateService(ctx, spec)
		})
		return err
	})
	s.step(settableEnv+"=7 applied", func(ctx context.Context) error {
		p, err := s.inspect(ctx, name)
		if err != nil {
			return err
		}
		if !slices.Contains(p.Settings.Env, settableEnv+"=7") {
			return fmt.Errorf("Settings.Env %q after the update, want %s=7", p.Settings.Env, settableEnv)
		}
		return nil
	})
	s.step("no upgrade, one outage under 2.5 s", func(context.Context) error {
		switch {
		case m.pulls.blobs > 0:
			return fmt.Errorf("the registry got %s: the plugin was upgraded", m.pulls)
		case m.out.failed > 0:
			return fmt.Errorf("%d polls failed: %v", m.out.failed, m.out.lastErr)
		case m.out.intervals > 1:
			return fmt.Errorf("the plugin went out of service %d times", m.out.intervals)
		case m.out.total > envOnlyOutageBound:
			return fmt.Errorf("disabled %d ms, more than the %d ms a disable, set and enable take", m.out.total.Milliseconds(), envOnlyOutageBound.Milliseconds())
		case len(m.out.ids) != 1 || m.out.ids[0] != m.id:
			return fmt.Errorf("plugin IDs seen %.12q, want only %.12s", m.out.ids, m.id)
		}
		return nil
	})
	s.step(stepEnvOnlyManagerWork, func(ctx context.Context) error {
		// The same work by hand, through the API: what the Manager itself
		// takes to disable, set and enable the plugin. It fails the
		// service's task (its Wait sees the disable); the next task finds
		// the plugin as its spec says and changes nothing.
		start := time.Now()
		if err := s.d.Client.PluginDisable(ctx, name, types.PluginDisableOptions{Force: true}); err != nil {
			return err
		}
		if err := s.d.Client.PluginSet(ctx, name, []string{settableEnv + "=7"}); err != nil {
			return err
		}
		if err := s.d.Client.PluginEnable(ctx, name, types.PluginEnableOptions{Timeout: 30}); err != nil {
			return err
		}
		byHand := time.Since(start)
		s.notef("the Manager's disable, set and enable by hand: %d ms; the update's outage: %d ms", byHand.Milliseconds(), m.out.total.Milliseconds())
		if m.out.total > byHand+pollSlack {
			return fmt.Errorf("the update had the plugin disabled %d ms, more than the Manager's own disable, set and enable (%d ms by hand) and %d ms of polling slack", m.out.total.Milliseconds(), byHand.Milliseconds(), pollSlack.Milliseconds())
		}
		return nil
	})
	s.removeStep("remove", name)
}

// throttledUpgrade is (n): an upgrade to :big, volplugin with paddingSize
// incompressible bytes in its rootfs, from a registry that serves blobs at
// throttleRate. It records how long the plugin is out of service, stock
// and fork alike: moby's Manager upgrades only a disabled plugin and
// downloads inside Upgrade, so the fork's outage still includes the
// download. The step checks that the download happened (the registry
// served at least paddingSize bytes of blobs during the update).
//
// The update is start-first. With the default order, stop-first, the new
// task is prepared while its desired state is still READY; swarmkit's
// agent cancels the operation in flight whenever it accepts an update of
// the task (agent/task.go), and the desired state turns RUNNING about
// 1.2 s into the update, when the old task has stopped: a download that
// takes longer is cancelled. Measured here: stock's task is then rejected
// ("failed to copy: context canceled"), its plugin left disabled and the
// update paused; the fork re-enables :1 and retries, and the retry's
// Upgrade, which resumes the partial download, fails in moby's fetcher
// ("httpReadSeeker: failed open: ... https://...: http: server gave HTTP
// response to HTTPS client"), so its task is rejected too, with :1
// enabled. A start-first task is created with desired state RUNNING, so
// nothing cancels its Prepare.
func throttledUpgrade(s *scenarioRun) {
	const name = "vol-n"
	var reg *updRegistry
	var refs updRefs
	s.step("registry of its own, :1 and :big", func(ctx context.Context) (err error) {
		reg, refs, err = s.updRegistry(ctx)
		return err
	})
	s.createStep("create :1", runtime.PluginSpec{Name: name, Remote: refs.v1}, pluginWant{enabled: true, remote: refs.v1})
	s.step("upgrade to :big at 1 MB/s, start-first", func(ctx context.Context) error {
		served := reg.blobBytes.Load()
		reg.throttle.Store(throttleRate)
		defer reg.throttle.Store(0)
		spec := runtime.PluginSpec{Name: name, Remote: refs.big}
		m, err := s.measureUpdate(ctx, name, reg, pluginWant{enabled: true, remote: refs.big}, func(ctx context.Context) (time.Time, error) {
			return s.updateServiceWith(ctx, spec, func(spec *swarm.ServiceSpec, _ swarm.Service) {
				spec.UpdateConfig.Order = swarm.UpdateOrderStartFirst
			})
		})
		served = reg.blobBytes.Load() - served
		s.notef("blobs served during the update: %.1f MB at %.1f MB/s", float64(served)/(1<<20), float64(throttleRate)/(1<<20))
		if err != nil {
			return err
		}
		if served < paddingSize {
			return fmt.Errorf("the registry served %d bytes of blobs during the upgrade, less than the padding's %d: :big was not downloaded", served, paddingSize)
		}
		if p, err := s.inspect(ctx, name); err == nil && p.ID != m.id {
			s.notef("the upgrade changed the plugin ID from %.12s to %.12s", m.id, p.ID)
		}
		return nil
	})
	s.removeStep("remove", name)
}

// registryDownForcedUpdate is (o): the registry stops (connections
// refused) while the service runs, a forced update follows, and polling
// goes on for registryDownFor before the registry starts again. The fork
// keeps the installed version in service: never disabled at any poll, no
// disable event, the update completes while the registry is down, and the
// new task runs on the installed plugin (same ID, same reference). Stock
// disables the plugin and fails to upgrade it; what it does, flaps
// included, is noted, and so is how long it takes to recover once the
// registry is back.
func registryDownForcedUpdate(s *scenarioRun) {
	const name = "vol-o"
	var reg *updRegistry
	var refs updRefs
	s.step("registry of its own, :1", func(ctx context.Context) (err error) {
		reg, refs, err = s.updRegistry(ctx)
		return err
	})
	spec := runtime.PluginSpec{Name: name, Remote: refs.v1}
	s.createStep("create", spec, pluginWant{enabled: true, remote: refs.v1})
	var down *registryDownRun
	s.step("registry down 20 s, forced update", func(ctx context.Context) (err error) {
		down, err = s.registryDown(ctx, name, reg, spec)
		return err
	})
	s.step(stepRegistryDownKept, func(context.Context) error {
		return down.kept(refs.v1)
	})
	s.removeStep("remove", name)
}

// registryDownRun is what (o) saw.
type registryDownRun struct {
	id, oldTask      string
	out              outage // from the update until the registry was back
	completed        time.Duration
	disables         int
	enables          int
	atEnd            observed // at the end of the registryDownFor
	recovered        time.Duration
	updateStates     []string
	tasksSeen        []string
	registryDownLogs int
}

// registryDown stops reg, makes a forced update of the service to spec and
// polls the plugin (and the service and its tasks) for registryDownFor,
// then restarts reg and waits until the plugin is enabled with a RUNNING
// task again.
func (s *scenarioRun) registryDown(ctx context.Context, name string, reg *updRegistry, spec runtime.PluginSpec) (*registryDownRun, error) {
	before := s.observe(ctx, name)
	if before.err != nil || before.plugin == nil || before.newestTask() == nil {
		return nil, fmt.Errorf("no plugin or task before the update: %s", before)
	}
	r := &registryDownRun{id: before.plugin.ID, oldTask: before.newestTask().ID}
	_, logOffset := s.d.logSince(0)
	if err := reg.Stop(); err != nil {
		return nil, err
	}
	since, err := s.forceUpdate(ctx, spec)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	seenTask := map[string]string{}
	lastUpdate := ""
	see := func(st observed) {
		if st.err != nil {
			r.out.fail(st.err)
			return
		}
		r.out.see(time.Now(), st.plugin)
		if u := st.update; u != nil && u.StartedAt != nil && !u.StartedAt.Before(since) {
			state := string(u.State)
			if u.Message != "" {
				state += fmt.Sprintf(" %q", u.Message)
			}
			if state != lastUpdate {
				lastUpdate = state
				r.updateStates = append(r.updateStates, fmt.Sprintf("%s at %.1f s", state, time.Since(start).Seconds()))
			}
			if u.State == swarm.UpdateStateCompleted && r.completed == 0 {
				r.completed = time.Since(start)
			}
		}
		for _, t := range st.tasks {
			desc := fmt.Sprintf("%s/%s", t.Status.State, t.DesiredState)
			if t.Status.Err != "" {
				desc += fmt.Sprintf(" %q", t.Status.Err)
			}
			if seenTask[t.ID] != desc {
				seenTask[t.ID] = desc
				r.tasksSeen = append(r.tasksSeen, fmt.Sprintf("%.10s %s at %.1f s", t.ID, desc, time.Since(start).Seconds()))
			}
		}
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for time.Since(start) < registryDownFor {
		st := s.observe(ctx, name)
		see(st)
		r.atEnd = st
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-tick.C:
		}
	}
	if err := reg.Restart(); err != nil {
		return r, err
	}
	up := time.Now()
	err = poll(ctx, "the plugin enabled with a RUNNING task after the registry is back", func(ctx context.Context) (bool, string, error) {
		st := s.observe(ctx, name)
		see(st)
		t := st.newestTask()
		done := st.plugin != nil && st.plugin.Enabled && t != nil && t.ID != r.oldTask &&
			t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning
		return done, st.String(), nil
	})
	r.recovered = time.Since(up)
	r.out.finish(time.Now())
	disables, derr := s.pluginEvents(ctx, since, r.id, events.ActionDisable)
	enables, eerr := s.pluginEvents(ctx, since, r.id, events.ActionEnable)
	r.disables, r.enables = len(disables), len(enables)
	r.registryDownLogs = len(s.d.logMessages(logOffset, "cannot check the remote"))
	s.notef("registry down for %.0f s: %s; %d disable and %d enable event(s)", registryDownFor.Seconds(), r.out, r.disables, r.enables)
	if r.completed > 0 {
		s.notef("the update completed %.1f s after it started", r.completed.Seconds())
	}
	s.notef("update: %s", strings.Join(r.updateStates, ", "))
	s.notef("tasks: %s", strings.Join(r.tasksSeen, "; "))
	s.notef("at the end of the %.0f s: %s", registryDownFor.Seconds(), r.atEnd)
	s.notef("registry back: plugin enabled with a new RUNNING task %.1f s later; %d daemon log line(s) \"cannot check the remote for a new version\"", r.recovered.Seconds(), r.registryDownLogs)
	return r, errors.Join(err, derr, eerr)
}

// kept checks that nothing went out of service while the registry was
// down and that, at the end of it, the update had completed and a new
// task ran on the installed plugin, the reference remote.
func (r *registryDownRun) kept(remote string) error {
	if err := r.out.neverOut(r.id); err != nil {
		return err
	}
	if r.disables > 0 {
		return fmt.Errorf("%d disable event(s) of plugin %.12s", r.disables, r.id)
	}
	if r.completed == 0 || r.completed > registryDownFor {
		return fmt.Errorf("the update did not complete while the registry was down: %s", strings.Join(r.updateStates, ", "))
	}
	st := r.atEnd
	t := st.newestTask()
	switch {
	case st.plugin == nil || !st.plugin.Enabled || st.plugin.ID != r.id || st.plugin.PluginReference != remote:
		return fmt.Errorf("not the installed plugin %.12s on %s, enabled: %s", r.id, remote, st)
	case t == nil || t.ID == r.oldTask || t.Status.State != swarm.TaskStateRunning || t.DesiredState != swarm.TaskStateRunning:
		return fmt.Errorf("no new RUNNING task: %s", st)
	}
	return nil
}

// repeatedEnvKey is (p): a spec whose Env names the declared key twice,
// VERSION=1 then VERSION=2 (volplugin declares no other settable key), and
// three forced updates of it. The install keeps the last value, and the
// fork counts the key once, the last, so no update disables the plugin or
// flips its env: VERSION=2 at every poll.
func repeatedEnvKey(s *scenarioRun) {
	const name = "vol-p"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1, Env: []string{settableEnv + "=1", settableEnv + "=2"}}
	last := settableEnv + "=2"
	s.createStep("create "+strings.Join(spec.Env, ","), spec, pluginWant{enabled: true, env: []string{last}})
	var ms []*measuredUpdate
	s.step("3 forced updates", func(ctx context.Context) error {
		for range 3 {
			m, err := s.measureUpdate(ctx, name, s.reg, pluginWant{enabled: true}, func(ctx context.Context) (time.Time, error) {
				return s.forceUpdate(ctx, spec)
			})
			if err != nil {
				return err
			}
			ms = append(ms, m)
		}
		return nil
	})
	s.step(stepRepeatedNeverDisabled, func(context.Context) error {
		var errs []error
		for i, m := range ms {
			if err := m.out.neverOut(m.id); err != nil {
				errs = append(errs, fmt.Errorf("update %d: %w", i+1, err))
			}
			if m.disables > 0 {
				errs = append(errs, fmt.Errorf("update %d: %d disable event(s)", i+1, m.disables))
			}
			if want := fmt.Sprintf("%q", []string{last}); len(m.out.envs) != 1 || m.out.envs[0] != want {
				errs = append(errs, fmt.Errorf("update %d: Settings.Env seen %s, want only %s", i+1, strings.Join(m.out.envs, ", "), want))
			}
		}
		return errors.Join(errs...)
	})
	s.removeStep("remove", name)
}
