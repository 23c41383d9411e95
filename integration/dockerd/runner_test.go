//go:build linux

package dockerd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/docker/docker/api/types/volume"
)

const (
	// pollInterval is how often a wait asks the daemon for its state.
	pollInterval = 100 * time.Millisecond
	// patience bounds every wait; the daemon needs about 2 s for its
	// slowest step (an upgrade).
	patience = 45 * time.Second
)

// poll calls check every pollInterval until it reports done or an error,
// and fails once patience has passed or ctx ends. check's state describes
// what it saw; the timeout error carries the last one (check always gets
// ctx itself, so its last call is not cut short by the deadline).
func poll(ctx context.Context, what string, check func(context.Context) (done bool, state string, err error)) error {
	return pollFor(ctx, patience, what, check)
}

// pollFor is poll with a patience of its own.
func pollFor(ctx context.Context, patience time.Duration, what string, check func(context.Context) (done bool, state string, err error)) error {
	deadline := time.Now().Add(patience)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		done, state, err := check(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("waiting for %s: %w; state: %s", what, err, state)
		case done:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("waiting for %s: gave up after %v; last state: %s", what, patience, state)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w; last state: %s", what, ctx.Err(), state)
		case <-tick.C:
		}
	}
}

// scenario is one end-to-end scenario, run on each daemon in turn.
type scenario struct {
	id, title string
	run       func(*scenarioRun)
	// issue is the issue the scenario comes from.
	issue int
	// stock is what the issue says stock dockerd v28.3.0 does in this
	// scenario; nil means it says nothing and the result is only recorded.
	stock *outcome
	// stockV2 is what stock moby v2's dockerd does in this scenario, as
	// measured; nil: only recorded.
	stockV2 *outcome
	// healthRestarts is how many plugins a fork's health check restarts in
	// the scenario (restarts_test.go): (r)'s one heal, none elsewhere.
	healthRestarts int
}

// outcome is the result of a scenario: it passes (failsAt empty) or its
// step called failsAt is the first that fails.
type outcome struct{ failsAt string }

func (o outcome) String() string {
	if o.failsAt == "" {
		return "pass"
	}
	return fmt.Sprintf("fail at %q", o.failsAt)
}

// stepResult is one step of a scenario on one daemon.
type stepResult struct {
	name  string
	ran   bool // false: an earlier step failed
	took  time.Duration
	err   error
	notes []string
}

// scenarioResult is a scenario's result on one daemon.
type scenarioResult struct {
	scenario *scenario
	steps    []*stepResult
	cleanup  error // resetting the daemon after the scenario
	// processes counts the plugin processes and their restarts during the
	// scenario, its cleanups and the reset, workers included; workers is
	// the workers' part, added as each is closed.
	processes, workers processCount
	// restarts is a fork's breach of the restart rule (checkRestarts).
	restarts error
}

func (r *scenarioResult) outcome() outcome {
	for _, s := range r.steps {
		if s.err != nil {
			return outcome{failsAt: s.name}
		}
	}
	return outcome{}
}

func (r *scenarioResult) took() time.Duration {
	var total time.Duration
	for _, s := range r.steps {
		total += s.took
	}
	return total
}

// failure describes the failed step, or is "" if none failed.
func (r *scenarioResult) failure() string {
	for _, s := range r.steps {
		if s.err != nil {
			return fmt.Sprintf("step %q: %v", s.name, s.err)
		}
	}
	return ""
}

// scenarioRun is a scenario in progress on one daemon. Its step method
// runs and records the scenario's steps; its other methods drive the
// scenario's plugin service through the daemon's API.
type scenarioRun struct {
	ctx      context.Context
	d        *Daemon
	plugins  *published
	reg      *registry // the plugins' registry, which counts pulls
	logStart int64     // the offset in dockerd's log where the scenario began
	result   *scenarioResult
	current  *stepResult
	svcID    string // the scenario's service, once created
	cleanups []func(context.Context) error
}

// onCleanup registers fn to run after the scenario, before the daemon's
// reset, whether its steps passed or not: for what the reset cannot undo
// on its own.
func (s *scenarioRun) onCleanup(fn func(context.Context) error) {
	s.cleanups = append(s.cleanups, fn)
}

// step runs fn as the next step and records how long it took and its
// error. Once a step has failed, the following ones are recorded as not
// run and fn is not called.
func (s *scenarioRun) step(name string, fn func(ctx context.Context) error) {
	failed := s.result.outcome().failsAt != ""
	st := &stepResult{name: name}
	s.result.steps = append(s.result.steps, st)
	if failed {
		return
	}
	s.current = st
	start := time.Now()
	st.err = fn(s.ctx)
	st.took, st.ran = time.Since(start), true
	s.current = nil
}

// notef records an observation on the step in progress (shown under the
// table).
func (s *scenarioRun) notef(format string, args ...any) {
	if s.current != nil {
		s.current.notes = append(s.current.notes, fmt.Sprintf(format, args...))
	}
}

// serviceSpec is the spec of the scenario's plugin service, named after the
// scenario. The daemon forces plugin services global; this one node runs
// one task. The update monitor is shortened from 5 s so that an update
// completes as soon as the new task runs; a failed task pauses it.
func (s *scenarioRun) serviceSpec(p runtime.PluginSpec) swarm.ServiceSpec {
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "svc-" + s.result.scenario.id},
		TaskTemplate: swarm.TaskSpec{
			Runtime:    swarm.RuntimePlugin,
			PluginSpec: &p,
		},
		UpdateConfig: &swarm.UpdateConfig{
			Monitor:       200 * time.Millisecond,
			FailureAction: swarm.UpdateFailureActionPause,
		},
	}
}

func (s *scenarioRun) createService(ctx context.Context, p runtime.PluginSpec) error {
	resp, err := s.d.Client.ServiceCreate(ctx, s.serviceSpec(p), swarm.ServiceCreateOptions{})
	if err != nil {
		return err
	}
	s.svcID = resp.ID
	return nil
}

// updateService replaces the service's plugin spec and returns the time
// just before the update, which the update's StartedAt follows.
func (s *scenarioRun) updateService(ctx context.Context, p runtime.PluginSpec) (time.Time, error) {
	svc, _, err := s.d.Client.ServiceInspectWithRaw(ctx, s.svcID, swarm.ServiceInspectOptions{})
	if err != nil {
		return time.Time{}, err
	}
	before := time.Now().Round(0)
	_, err = s.d.Client.ServiceUpdate(ctx, s.svcID, svc.Version, s.serviceSpec(p), swarm.ServiceUpdateOptions{})
	return before, err
}

// waitUpdate waits until the service's update that started after since
// has completed, and fails as soon as it pauses or rolls back. Its errors
// describe the plugin called name too.
func (s *scenarioRun) waitUpdate(ctx context.Context, since time.Time, name string) error {
	return poll(ctx, "the service update to complete", func(ctx context.Context) (bool, string, error) {
		st := s.observe(ctx, name)
		u := st.update
		if u == nil || u.StartedAt == nil || u.StartedAt.Before(since) {
			return false, st.String(), nil
		}
		switch u.State {
		case swarm.UpdateStateCompleted:
			return true, st.String(), nil
		case swarm.UpdateStateUpdating:
			return false, st.String(), nil
		}
		return false, st.String(), fmt.Errorf("update %s: %s", u.State, u.Message)
	})
}

// pluginWant is a state of the scenario's plugin that a wait expects.
type pluginWant struct {
	enabled bool
	remote  string   // the plugin's reference, if not empty
	env     []string // entries Settings.Env must hold
}

// waitPlugin waits until the plugin called name is in the state want and
// the service's newest task is RUNNING.
func (s *scenarioRun) waitPlugin(ctx context.Context, name string, want pluginWant) error {
	return poll(ctx, fmt.Sprintf("plugin %s %+v with a RUNNING task", name, want), func(ctx context.Context) (bool, string, error) {
		st := s.observe(ctx, name)
		p := st.plugin
		if p == nil || p.Enabled != want.enabled || (want.remote != "" && p.PluginReference != want.remote) {
			return false, st.String(), nil
		}
		for _, e := range want.env {
			if !slices.Contains(p.Settings.Env, e) {
				return false, st.String(), nil
			}
		}
		t := st.newestTask()
		return t != nil && t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning, st.String(), nil
	})
}

// waitGone waits until no plugin called name is installed.
func (s *scenarioRun) waitGone(ctx context.Context, name string) error {
	return poll(ctx, "plugin "+name+" to be removed", func(ctx context.Context) (bool, string, error) {
		st := s.observe(ctx, name)
		return st.plugin == nil && st.err == nil, st.String(), nil
	})
}

func (s *scenarioRun) removeService(ctx context.Context) error {
	return s.d.Client.ServiceRemove(ctx, s.svcID)
}

// inspect returns the plugin called name.
func (s *scenarioRun) inspect(ctx context.Context, name string) (*types.Plugin, error) {
	p, _, err := s.d.Client.PluginInspectWithRaw(ctx, name)
	return p, err
}

// observed is what the daemon says about the scenario's service and
// plugin at one moment.
type observed struct {
	name   string
	plugin *types.Plugin // nil: not installed (or err)
	update *swarm.UpdateStatus
	tasks  []swarm.Task // of the service, newest first
	err    error        // the first API call that failed
}

// observe asks the daemon for the state of the scenario's service (if
// created and not removed) and of the plugin called name (if not empty).
func (s *scenarioRun) observe(ctx context.Context, name string) observed {
	o := observed{name: name}
	keep := func(err error) {
		if err != nil && o.err == nil && !cerrdefs.IsNotFound(err) {
			o.err = err
		}
	}
	if name != "" {
		p, err := s.inspect(ctx, name)
		keep(err)
		if err == nil {
			o.plugin = p
		}
	}
	if s.svcID == "" {
		return o
	}
	svc, _, err := s.d.Client.ServiceInspectWithRaw(ctx, s.svcID, swarm.ServiceInspectOptions{})
	keep(err)
	if err != nil {
		return o
	}
	o.update = svc.UpdateStatus
	filter := pluginRuntime()
	filter.Add("service", s.svcID)
	o.tasks, err = s.d.Client.TaskList(ctx, swarm.TaskListOptions{Filters: filter})
	keep(err)
	sort.Slice(o.tasks, func(i, j int) bool { return o.tasks[i].CreatedAt.After(o.tasks[j].CreatedAt) })
	return o
}

func (o observed) newestTask() *swarm.Task {
	if len(o.tasks) == 0 {
		return nil
	}
	return &o.tasks[0]
}

// String describes the state in one line, for errors: the plugin, the
// service's update and its three newest tasks.
func (o observed) String() string {
	var parts []string
	switch p := o.plugin; {
	case o.name == "":
	case p == nil:
		parts = append(parts, fmt.Sprintf("plugin %s absent", o.name))
	default:
		parts = append(parts, fmt.Sprintf("plugin %s id %.12s enabled=%v ref %s env %q", p.Name, p.ID, p.Enabled, p.PluginReference, p.Settings.Env))
	}
	if u := o.update; u != nil {
		parts = append(parts, fmt.Sprintf("update %s %q", u.State, u.Message))
	}
	for i, t := range o.tasks {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("%d older tasks", len(o.tasks)-i))
			break
		}
		task := fmt.Sprintf("task %.10s %s/%s", t.ID, t.Status.State, t.DesiredState)
		if t.Status.Err != "" {
			task += fmt.Sprintf(" err %q", t.Status.Err)
		}
		parts = append(parts, task)
	}
	if o.err != nil {
		parts = append(parts, fmt.Sprintf("API error: %v", o.err))
	}
	return strings.Join(parts, "; ")
}

// pluginDir is where the daemon keeps the plugin with the given ID.
func (d *Daemon) pluginDir(id string) string {
	return filepath.Join(d.path(dataRoot), "plugins", id)
}

// reset removes every volume, service and plugin from the daemon, so that
// the next scenario starts clean whatever this one left behind: volumes
// first (by force: their driver may be disabled), then services, letting
// their tasks remove their plugins, then by force the plugins left; last
// it waits for every plugin task to end. It first makes sure dockerd runs
// as an active swarm manager (ensureSwarm): a scenario may restart the
// daemon or leave the swarm.
func (d *Daemon) reset(ctx context.Context) error {
	if err := d.ensureSwarm(ctx); err != nil {
		return err
	}
	vols, err := d.Client.VolumeList(ctx, volume.ListOptions{})
	if err != nil {
		return err
	}
	for _, v := range vols.Volumes {
		if err := d.Client.VolumeRemove(ctx, v.Name, true); err != nil {
			return err
		}
	}
	services, err := d.Client.ServiceList(ctx, swarm.ServiceListOptions{Filters: pluginRuntime()})
	if err != nil {
		return err
	}
	for _, svc := range services {
		if err := d.Client.ServiceRemove(ctx, svc.ID); err != nil {
			return err
		}
	}
	var plugins types.PluginsListResponse
	if len(services) > 0 {
		// A task's Remove takes about 1.6 s. A controller that fails to
		// remove its plugin leaves it to the forced removal below.
		_ = pollFor(ctx, 10*time.Second, "the services' plugins to be removed", func(ctx context.Context) (bool, string, error) {
			plugins, err = d.Client.PluginList(ctx, filters.Args{})
			return err == nil && len(plugins) == 0, fmt.Sprint(len(plugins), err), nil
		})
	}
	if plugins, err = d.Client.PluginList(ctx, filters.Args{}); err != nil {
		return err
	}
	for _, p := range plugins {
		if err := d.Client.PluginRemove(ctx, p.ID, types.PluginRemoveOptions{Force: true}); err != nil {
			return err
		}
	}
	return poll(ctx, "every plugin task to end", func(ctx context.Context) (bool, string, error) {
		tasks, err := d.Client.TaskList(ctx, swarm.TaskListOptions{Filters: pluginRuntime()})
		live := slices.DeleteFunc(tasks, func(t swarm.Task) bool { return ended(t.Status.State) })
		var desc []string
		for _, t := range live {
			desc = append(desc, fmt.Sprintf("task %.10s of %.10s %s/%s", t.ID, t.ServiceID, t.Status.State, t.DesiredState))
		}
		return err == nil && len(live) == 0, fmt.Sprint(desc, err), nil
	})
}

// pluginRuntime is the filter that lists plugin services and their tasks:
// without a runtime filter the daemon lists containers' only.
func pluginRuntime() filters.Args {
	return filters.NewArgs(filters.Arg("runtime", string(swarm.RuntimePlugin)))
}

// ended reports whether a task in state s has ended for good.
func ended(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateShutdown, swarm.TaskStateFailed,
		swarm.TaskStateRejected, swarm.TaskStateRemove, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// logLine matches a logrus line of dockerd and captures its level and the
// rest after the time.
var logLine = regexp.MustCompile(`^time="[^"]*" level=(\w+) (.*)$`)

// pluginLogExcerpt returns dockerd's warnings and errors about plugins in
// log, each distinct line once with its count, at most max lines.
func pluginLogExcerpt(log string, max int) string {
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(log, "\n") {
		m := logLine.FindStringSubmatch(line)
		if m == nil || (m[1] != "warning" && m[1] != "error" && m[1] != "fatal") || !strings.Contains(strings.ToLower(m[2]), "plugin") {
			continue
		}
		key := "level=" + m[1] + " " + m[2]
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	var b strings.Builder
	for i, line := range order {
		if i == max {
			fmt.Fprintf(&b, "... %d more distinct lines\n", len(order)-max)
			break
		}
		if counts[line] > 1 {
			fmt.Fprintf(&b, "(%d×) ", counts[line])
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// table renders the results of every build side by side in markdown, in
// the order of dockerds: one row per scenario with its outcome and total
// time, one per step with its result and time, then the failures and
// notes.
func table(results map[*dockerdBuild][]*scenarioResult) string {
	var builds []*dockerdBuild
	for _, b := range dockerds {
		if _, ok := results[b]; ok {
			builds = append(builds, b)
		}
	}
	byID := func(b *dockerdBuild, id string) *scenarioResult {
		for _, r := range results[b] {
			if r.scenario.id == id {
				return r
			}
		}
		return nil
	}
	var ids []string
	titles := map[string]string{}
	var steps = map[string][]string{}
	for _, b := range builds {
		for _, r := range results[b] {
			if !slices.Contains(ids, r.scenario.id) {
				ids = append(ids, r.scenario.id)
				titles[r.scenario.id] = r.scenario.title
			}
			for _, st := range r.steps {
				if !slices.Contains(steps[r.scenario.id], st.name) {
					steps[r.scenario.id] = append(steps[r.scenario.id], st.name)
				}
			}
		}
	}
	sort.Strings(ids)

	var b strings.Builder
	b.WriteString("| scenario | step |")
	for _, bd := range builds {
		fmt.Fprintf(&b, " %s %s |", bd.moby.name, bd.flavor)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(builds)) + "\n")
	for _, id := range ids {
		fmt.Fprintf(&b, "| **(%s)** %s | |", id, titles[id])
		for _, bd := range builds {
			r := byID(bd, id)
			var declared *outcome
			if r != nil {
				declared = bd.moby.declared(r.scenario)
			}
			switch {
			case r == nil:
				b.WriteString(" not run |")
			case r.outcome().failsAt == "":
				fmt.Fprintf(&b, " **pass** %.1f s |", r.took().Seconds())
			case bd.flavor == stock && declared != nil && r.outcome() == *declared && r.scenario.stock != nil && *r.scenario.stock == *declared:
				fmt.Fprintf(&b, " **FAIL** %.1f s, as issue %d says |", r.took().Seconds(), r.scenario.issue)
			case bd.flavor == stock && declared != nil && r.outcome() == *declared:
				fmt.Fprintf(&b, " **FAIL** %.1f s, as declared |", r.took().Seconds())
			default:
				fmt.Fprintf(&b, " **FAIL** %.1f s |", r.took().Seconds())
			}
		}
		b.WriteString("\n")
		for _, name := range steps[id] {
			fmt.Fprintf(&b, "| | %s |", name)
			for _, bd := range builds {
				var st *stepResult
				if r := byID(bd, id); r != nil {
					for _, s := range r.steps {
						if s.name == name {
							st = s
						}
					}
				}
				switch {
				case st == nil || !st.ran:
					b.WriteString(" – |")
				case st.err != nil:
					fmt.Fprintf(&b, " FAIL %.1f s |", st.took.Seconds())
				default:
					fmt.Fprintf(&b, " ok %.1f s |", st.took.Seconds())
				}
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "| | %s |", restartsRow)
		for _, bd := range builds {
			if r := byID(bd, id); r != nil {
				fmt.Fprintf(&b, " %s |", restartCell(r.processes, r.restarts))
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "| **plugin restarts, every scenario** | %s |", restartsRow)
	for _, bd := range builds {
		var breach error
		for _, r := range results[bd] {
			breach = errors.Join(breach, r.restarts)
		}
		fmt.Fprintf(&b, " **%s** |", restartCell(restartTotals(results[bd]), breach))
	}
	b.WriteString("\n")
	var details []string
	for _, id := range ids {
		for _, bd := range builds {
			r := byID(bd, id)
			if r == nil {
				continue
			}
			for _, st := range r.steps {
				for _, n := range st.notes {
					details = append(details, fmt.Sprintf("- %s (%s) %s: %s", bd.name(), id, st.name, n))
				}
			}
			if msg := r.failure(); msg != "" {
				details = append(details, fmt.Sprintf("- %s (%s) **%s**", bd.name(), id, msg))
			}
			if r.restarts != nil {
				details = append(details, fmt.Sprintf("- %s (%s) **restarts: %v**", bd.name(), id, r.restarts))
			}
			if r.cleanup != nil {
				details = append(details, fmt.Sprintf("- %s (%s) cleanup: %v", bd.name(), id, r.cleanup))
			}
		}
	}
	if len(details) > 0 {
		b.WriteString("\n" + strings.Join(details, "\n") + "\n")
	}
	return b.String()
}

// restartsRow names the table's rows of plugin restarts.
const restartsRow = "plugin restarts (by the health check) / processes"

// restartCell is a build's figures in a restarts row: restarts, those by
// the health check, and process starts; FAIL if the fork broke the rule.
func restartCell(c processCount, breach error) string {
	cell := fmt.Sprintf("%d (%d) / %d", c.restarts, c.health, c.starts)
	if breach != nil {
		cell = "FAIL " + cell
	}
	return cell
}

// writeTable writes the table to the file named by $DOCKERD_TABLE, if set.
func writeTable(s string) error {
	path := os.Getenv("DOCKERD_TABLE")
	if path == "" {
		return nil
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
