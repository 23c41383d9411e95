//go:build linux

package dockerd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/docker/docker/api/types/volume"
)

// scenarios are issue 15's scenarios (a)–(e) and issue 16's (f)–(h),
// each with its own plugin name and service, run in this order on each
// daemon. The forks must pass them all. stock records what the issue says
// stock dockerd v28.3.0 does; stockV2 what stock moby v2 v2.0.0-beta.24
// does, as measured here (its controller is v28's with the types moved).
var scenarios = []*scenario{
	{id: "a", title: "moby's TestServicePlugin flow, Env [baz foo=bar]", run: servicePluginFlow, issue: 15, stock: &outcome{}, stockV2: &outcome{}},
	{id: "b", title: "settable env update VERSION=1 → 7 is applied", run: settableEnvUpdate, issue: 15, stock: &outcome{failsAt: "VERSION=7 applied"}, stockV2: &outcome{failsAt: "VERSION=7 applied"}},
	{id: "c", title: "undeclared env key update foo=bar → foo=qux", run: undeclaredEnvUpdate, issue: 15, stock: &outcome{}, stockV2: &outcome{}},
	{id: "d", title: "plugin used by a volume: upgrade, then Disabled", run: volumeInUse, issue: 15, stock: &outcome{failsAt: "Disabled waits for the volume"}, stockV2: &outcome{failsAt: "Disabled waits for the volume"}},
	{id: "e", title: "removing the service removes the plugin", run: removeService, issue: 15, stockV2: &outcome{}},
	{id: "f", title: "dockerd restart keeps the plugin", run: restartKeepsPlugin, issue: 16, stock: &outcome{failsAt: stepKeptAtStart}, stockV2: &outcome{failsAt: stepKeptAtStart}},
	{id: "g", title: "swarm leave removes the plugin", run: leaveRemovesPlugin, issue: 16, stock: &outcome{}, stockV2: &outcome{}},
	{id: "h", title: "service deleted while a worker was down", run: serviceDeletedWhileDown, issue: 16, stock: &outcome{}, stockV2: &outcome{}},
	{id: "i", title: "a grant lacking a required privilege is refused (CVE-2026-33997)", run: privilegeGrant, issue: 23, stock: &outcome{failsAt: stepUnderGrantRefused}, stockV2: &outcome{failsAt: stepUnderGrantRefused}},
	{id: "j", title: "worker restart past the heartbeat grace keeps its plugin", run: workerRestartPastGrace, issue: 24, stock: &outcome{failsAt: stepWorkerKept}, stockV2: &outcome{failsAt: stepWorkerKept}},
	{id: "j2", title: "worker restart within the heartbeat grace keeps its plugin", run: workerRestartWithinGrace, issue: 24, stock: &outcome{failsAt: stepWorkerKept}, stockV2: &outcome{failsAt: stepWorkerKept}},
	{id: "k", title: "swarm leave with a task running, 5 times", run: leaveWithTaskRunning, issue: 24},
	{id: "l", title: "forced update, nothing changed: never disabled", run: forcedUpdateNothingChanged, issue: 25, stock: &outcome{failsAt: stepForcedNothingDisabled}, stockV2: &outcome{failsAt: stepForcedNothingDisabled}},
	{id: "m", title: "env-only update VERSION=1 → 7: set, no upgrade", run: envOnlyUpdate, issue: 25, stock: &outcome{failsAt: settableEnv + "=7 applied"}, stockV2: &outcome{failsAt: settableEnv + "=7 applied"}},
	{id: "n", title: "upgrade to a 10 MB tag through a 1 MB/s registry", run: throttledUpgrade, issue: 25, stock: &outcome{}, stockV2: &outcome{}},
	{id: "o", title: "registry down 20 s during a forced update", run: registryDownForcedUpdate, issue: 25, stock: &outcome{failsAt: stepRegistryDownKept}, stockV2: &outcome{failsAt: stepRegistryDownKept}},
	{id: "p", title: "repeated env key VERSION=1,VERSION=2, 3 forced updates", run: repeatedEnvKey, issue: 25, stock: &outcome{failsAt: stepRepeatedNeverDisabled}, stockV2: &outcome{failsAt: stepRepeatedNeverDisabled}},
	{id: "q", title: "a broken release (never answers) rolls back to :1", run: brokenReleaseRollsBack, issue: 28, stock: &outcome{failsAt: stepRolledBack}, stockV2: &outcome{failsAt: stepRolledBack}},
	{id: "r", title: "a hung plugin fails its task, the next task restarts it", run: hangHealed, issue: 28, stock: &outcome{failsAt: stepHangHealed}, stockV2: &outcome{failsAt: stepHangHealed}, healthRestarts: 1},
	{id: "s", title: "a slow start: RUNNING only once the plugin answers", run: slowStart, issue: 28, stock: &outcome{failsAt: stepSlowRunning}, stockV2: &outcome{failsAt: stepSlowRunning}},
}

// TestDockerd runs every scenario on each dockerd build in turn (dockerds:
// v28-stock, v28-fork, v2-stock, v2-fork), each build made when its
// subtest first runs, and logs the side-by-side table (also written to
// $DOCKERD_TABLE if set). Subtests are TestDockerd/<build>/<scenario id>.
func TestDockerd(t *testing.T) {
	requireHost(t)
	run, err := selectedScenarios(os.Getenv(scenariosEnv), os.Getenv("CI") == "true")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("CI") == "true" && os.Getenv(scenariosEnv) != "" {
		t.Logf("$%s is ignored under CI=true: every scenario runs", scenariosEnv)
	}
	if len(run) < len(scenarios) {
		var ids []string
		for _, sc := range run {
			ids = append(ids, sc.id)
		}
		t.Logf("$%s: only scenarios %s", scenariosEnv, strings.Join(ids, ", "))
	}
	setup(t)
	results := map[*dockerdBuild][]*scenarioResult{}
	for _, b := range dockerds {
		t.Run(b.name(), func(t *testing.T) {
			requireBuild(t, b)
			d, plugins := startDaemon(t, b)
			for _, sc := range run {
				t.Run(sc.id, func(t *testing.T) {
					r := runScenario(t, d, plugins, sc)
					results[b] = append(results[b], r)
					judge(t, b, r)
				})
			}
		})
	}
	if len(results) == 0 {
		return
	}
	tbl := table(results)
	var builds []string
	for _, b := range dockerds {
		if b.path != "" {
			builds = append(builds, fmt.Sprintf("%s %.1f s", b.name(), b.took.Seconds()))
		}
	}
	var restarts []string
	for _, b := range dockerds {
		if rs, ok := results[b]; ok {
			restarts = append(restarts, fmt.Sprintf("%s %s", b.name(), restartTotals(rs)))
		}
	}
	t.Logf("setup (plugin, registry) %.1f s: %v; dockerd builds: %s; plugin restarts over the run: %s\n\n%s", shared.setup.Seconds(), shared.bins, strings.Join(builds, ", "), strings.Join(restarts, "; "), tbl)
	if err := writeTable(tbl); err != nil {
		t.Error(err)
	}
}

// scenariosEnv names the variable that, outside CI, limits a run to some
// scenarios: a comma-separated list of their ids (say "q,r,s"), to iterate
// on them quickly. Empty: every scenario. Under CI=true it is ignored: CI
// runs everything.
const scenariosEnv = "DOCKERD_SCENARIOS"

// selectedScenarios returns the scenarios that list (scenariosEnv's value)
// names, in their order, or all of them if list is empty or ci is set. An
// id that names no scenario is an error, not an empty run.
func selectedScenarios(list string, ci bool) ([]*scenario, error) {
	if ci || strings.TrimSpace(list) == "" {
		return scenarios, nil
	}
	want := map[string]bool{}
	for _, id := range strings.Split(list, ",") {
		if id = strings.TrimSpace(id); id != "" {
			want[id] = true
		}
	}
	var run []*scenario
	for _, sc := range scenarios {
		if want[sc.id] {
			run = append(run, sc)
			delete(want, sc.id)
		}
	}
	if len(want) > 0 {
		var unknown []string
		for id := range want {
			unknown = append(unknown, id)
		}
		slices.Sort(unknown)
		return nil, fmt.Errorf("$%s=%q: no scenario %s", scenariosEnv, list, strings.Join(unknown, ", "))
	}
	return run, nil
}

// TestSelectedScenarios checks $DOCKERD_SCENARIOS's parsing (no daemon).
func TestSelectedScenarios(t *testing.T) {
	ids := func(scs []*scenario) string {
		var out []string
		for _, sc := range scs {
			out = append(out, sc.id)
		}
		return strings.Join(out, ",")
	}
	all := ids(scenarios)
	for _, tc := range []struct {
		list string
		ci   bool
		want string
	}{
		{"", false, all},
		{" ", false, all},
		{"s, q,r", false, "q,r,s"},
		{"j2,", false, "j2"},
		{"q,r,s", true, all},
	} {
		got, err := selectedScenarios(tc.list, tc.ci)
		if err != nil || ids(got) != tc.want {
			t.Errorf("selectedScenarios(%q, %v) = %s, %v; want %s", tc.list, tc.ci, ids(got), err, tc.want)
		}
	}
	if _, err := selectedScenarios("q,zz", false); err == nil || !strings.Contains(err.Error(), "no scenario zz") {
		t.Errorf("an unknown id: %v", err)
	}
}

// scenarioTimeout bounds a scenario and the reset after it, API calls
// included (each wait is bounded by patience).
const scenarioTimeout = 5 * time.Minute

// runScenario runs sc on d, then resets d for the next scenario.
func runScenario(t *testing.T, d *Daemon, plugins *published, sc *scenario) *scenarioResult {
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	_, logStart := d.logSince(0)
	began := time.Now()
	r := &scenarioResult{scenario: sc}
	run := &scenarioRun{ctx: ctx, d: d, plugins: plugins, reg: shared.reg, logStart: logStart, result: r}
	sc.run(run)
	for _, st := range r.steps {
		switch {
		case !st.ran:
			t.Logf("%-34s not run", st.name)
		case st.err != nil:
			t.Logf("%-34s FAIL after %.1f s: %v", st.name, st.took.Seconds(), st.err)
		default:
			t.Logf("%-34s ok   %.1f s %s", st.name, st.took.Seconds(), strings.Join(st.notes, "; "))
		}
	}
	if r.outcome().failsAt != "" {
		log, _ := d.logSince(logStart)
		t.Logf("dockerd %s's warnings and errors about plugins during the scenario:\n%s", d.Name(), pluginLogExcerpt(log, 30))
	}
	var errs []error
	for _, fn := range run.cleanups {
		errs = append(errs, fn(ctx))
	}
	errs = append(errs, d.reset(ctx))
	var err error
	r.processes, err = run.countRestarts(ctx, began)
	r.cleanup = errors.Join(append(errs, err)...)
	t.Logf("plugin processes: %s", r.processes)
	if d.Flavor == fork {
		r.restarts = checkRestarts(sc, r.processes)
	}
	return r
}

// judge fails t if r contradicts what is expected of build b: a fork
// passes everything and keeps the restart rule (checkRestarts); stock
// does what the scenario declares for its release, where it declares
// anything (a stock result that changes means the premise changed).
func judge(t *testing.T, b *dockerdBuild, r *scenarioResult) {
	t.Helper()
	if r.cleanup != nil {
		t.Errorf("resetting dockerd %s after the scenario: %v", b.name(), r.cleanup)
	}
	got := r.outcome()
	declared := b.moby.declared(r.scenario)
	if r.restarts != nil {
		t.Errorf("%s: %v", b.name(), r.restarts)
	}
	switch {
	case b.flavor == fork && got.failsAt != "":
		t.Errorf("%s: %s", b.name(), r.failure())
	case b.flavor == stock && declared != nil && got != *declared:
		t.Errorf("%s: %v, the scenario declares %v for %s (issue %d) (%s)", b.name(), got, *declared, b.moby.title, r.scenario.issue, r.failure())
	case b.flavor == stock && got.failsAt != "":
		t.Logf("%s fails as expected: %s", b.name(), r.failure())
	}
}

// servicePluginFlow is (a), moby's integration/service/plugin_test.go
// (TestServicePlugin) on one node, with its Env: create, upgrade to :2,
// disable, enable, remove, create without a Name.
func servicePluginFlow(s *scenarioRun) {
	const name = "vol-a"
	env := []string{"baz", "foo=bar"} // "baz" is ignored at install
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1, Env: env}
	s.step("create", func(ctx context.Context) error {
		if err := s.createService(ctx, spec); err != nil {
			return err
		}
		if err := s.waitPlugin(ctx, name, pluginWant{enabled: true, remote: s.plugins.v1}); err != nil {
			return err
		}
		p, err := s.inspect(ctx, name)
		if err != nil {
			return err
		}
		s.notef("Settings.Env %q", p.Settings.Env)
		if !slices.Contains(p.Settings.Env, "foo=bar") || slices.ContainsFunc(p.Settings.Env, func(e string) bool { return strings.HasPrefix(e, "baz") }) {
			return fmt.Errorf("Settings.Env %q, want foo=bar and no baz", p.Settings.Env)
		}
		return nil
	})
	spec.Remote = s.plugins.v2
	s.updateStep("update to :2", spec, pluginWant{enabled: true, remote: s.plugins.v2})
	spec.Disabled = true
	s.updateStep("disable", spec, pluginWant{enabled: false, remote: s.plugins.v2})
	spec.Disabled = false
	s.updateStep("enable", spec, pluginWant{enabled: true, remote: s.plugins.v2})
	s.removeStep("remove", name)

	s.step("create without Name", func(ctx context.Context) error {
		if err := s.createService(ctx, runtime.PluginSpec{Remote: s.plugins.v1, Env: env}); err != nil {
			return err
		}
		return s.waitPlugin(ctx, s.plugins.v1, pluginWant{enabled: true, remote: s.plugins.v1})
	})
	s.removeStep("remove (no Name)", s.plugins.v1)
}

// settableEnvUpdate is (b): a service update that changes a declared,
// value-settable env entry reaches the installed plugin.
func settableEnvUpdate(s *scenarioRun) {
	const name = "vol-b"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1, Env: []string{settableEnv + "=1"}}
	s.createStep("create "+settableEnv+"=1", spec, pluginWant{enabled: true, env: spec.Env})
	spec.Env = []string{settableEnv + "=7"}
	s.updateStep("update to "+settableEnv+"=7", spec, pluginWant{enabled: true})
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
	s.removeStep("remove", name)
}

// undeclaredEnvUpdate is (c): a service update that changes an env key
// the plugin's config does not declare (Set refuses it) completes, and the
// plugin stays enabled with a RUNNING task.
func undeclaredEnvUpdate(s *scenarioRun) {
	const name = "vol-c"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1, Env: []string{"foo=bar"}}
	s.createStep("create foo=bar", spec, pluginWant{enabled: true, env: spec.Env})
	spec.Env = []string{"foo=qux"}
	s.updateStep("update to foo=qux", spec, pluginWant{enabled: true})
	s.step("stays enabled and RUNNING", func(ctx context.Context) error {
		return s.stable(ctx, name, "", 2*time.Second)
	})
	s.removeStep("remove", name)
}

// volumeInUse is (d): a volume on the plugin's driver holds a reference
// on the plugin. An upgrade to :2 completes anyway and the volume is then
// answered by the new version; a Disabled spec waits, saying why in the
// task's status, until the volume is removed.
func volumeInUse(s *scenarioRun) {
	const name, vol = "vol-d", "vd"
	spec := runtime.PluginSpec{Name: name, Remote: s.plugins.v1}
	s.createStep("create", spec, pluginWant{enabled: true})
	volRemoved := false
	s.step("volume create", func(ctx context.Context) error {
		if _, err := s.d.Client.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Driver: name}); err != nil {
			return err
		}
		// The reset cannot remove a volume whose driver is disabled: the
		// daemon lists volumes through their enabled drivers only, and
		// VolumeRemove with force does not purge one it cannot look up. Left
		// in the data root, it would cost the next daemon start 15 s of
		// retries to restore it (1+2+4+8 s) and then an error.
		s.onCleanup(func(ctx context.Context) error {
			if volRemoved || s.svcID == "" {
				return nil
			}
			enabled := runtime.PluginSpec{Name: name, Remote: s.plugins.v2}
			since, err := s.updateService(ctx, enabled)
			if err == nil {
				err = s.waitUpdate(ctx, since, name)
			}
			if err == nil {
				err = s.waitPlugin(ctx, name, pluginWant{enabled: true})
			}
			if err == nil {
				err = s.d.Client.VolumeRemove(ctx, vol, true)
			}
			if err != nil {
				return fmt.Errorf("removing volume %s (through its re-enabled driver): %w", vol, err)
			}
			return nil
		})
		return s.volumeServedBy(ctx, vol, "1")
	})
	spec.Remote = s.plugins.v2
	s.updateStep("update to :2", spec, pluginWant{enabled: true, remote: s.plugins.v2})
	s.step("volume answered by :2", func(ctx context.Context) error {
		return s.volumeServedBy(ctx, vol, "2")
	})
	spec.Disabled = true
	s.step("Disabled waits for the volume", func(ctx context.Context) error {
		if _, err := s.updateService(ctx, spec); err != nil {
			return err
		}
		return poll(ctx, "the task to say the plugin is in use", func(ctx context.Context) (bool, string, error) {
			st := s.observe(ctx, name)
			if st.plugin != nil && !st.plugin.Enabled {
				return false, st.String(), errors.New("the plugin was disabled while a volume uses it")
			}
			t := st.newestTask()
			if t == nil || !strings.Contains(t.Status.Err, "in use") {
				return false, st.String(), nil
			}
			s.notef("task status: %s %q", t.Status.State, t.Status.Err)
			return true, st.String(), nil
		})
	})
	s.step("volume rm, then disabled", func(ctx context.Context) error {
		if err := s.d.Client.VolumeRemove(ctx, vol, false); err != nil {
			return err
		}
		volRemoved = true
		return s.waitPlugin(ctx, name, pluginWant{enabled: false, remote: s.plugins.v2})
	})
	s.removeStep("remove", name)
}

// removeService is (e): removing the service removes the plugin, its
// directory under the data root included.
func removeService(s *scenarioRun) {
	const name = "vol-e"
	s.createStep("create", runtime.PluginSpec{Name: name, Remote: s.plugins.v1}, pluginWant{enabled: true})
	s.step("service rm removes the plugin", func(ctx context.Context) error {
		p, err := s.inspect(ctx, name)
		if err != nil {
			return err
		}
		if err := s.removeService(ctx); err != nil {
			return err
		}
		return s.removedForGood(ctx, name, p.ID)
	})
}

// removedForGood waits until the plugin called name is removed, then
// checks that its directory under the data root (id is its ID) went with
// it and that no record keeps it for a restart.
func (s *scenarioRun) removedForGood(ctx context.Context, name, id string) error {
	if err := s.waitGone(ctx, name); err != nil {
		return err
	}
	if _, err := os.Stat(s.d.pluginDir(id)); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("plugin directory %s is still there (%v)", s.d.pluginDir(id), err)
	}
	return s.noKeptRecord()
}

// noKeptRecord checks that the daemon's record of plugins kept for a
// restart does not exist.
func (s *scenarioRun) noKeptRecord() error {
	b, err := os.ReadFile(s.d.keptRecord())
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("%s exists: %s", s.d.keptRecord(), b)
}

// createStep creates the scenario's service and waits for its plugin.
func (s *scenarioRun) createStep(step string, spec runtime.PluginSpec, want pluginWant) {
	s.step(step, func(ctx context.Context) error {
		if err := s.createService(ctx, spec); err != nil {
			return err
		}
		return s.waitPlugin(ctx, pluginName(spec), want)
	})
}

// updateStep updates the service to spec, waits for the update to
// complete and then for the plugin to be in the state want.
func (s *scenarioRun) updateStep(step string, spec runtime.PluginSpec, want pluginWant) {
	s.step(step, func(ctx context.Context) error {
		since, err := s.updateService(ctx, spec)
		if err != nil {
			return err
		}
		if err := s.waitUpdate(ctx, since, pluginName(spec)); err != nil {
			return err
		}
		return s.waitPlugin(ctx, pluginName(spec), want)
	})
}

// removeStep removes the service and waits for its plugin to go.
func (s *scenarioRun) removeStep(step, name string) {
	s.step(step, func(ctx context.Context) error {
		if err := s.removeService(ctx); err != nil {
			return err
		}
		return s.waitGone(ctx, name)
	})
}

// pluginName is the name the plugin of spec is installed under.
func pluginName(spec runtime.PluginSpec) string {
	if spec.Name != "" {
		return spec.Name
	}
	return spec.Remote
}

// stable checks for a while that the plugin stays enabled (and, if id is
// not empty, the plugin with that ID) and the service's newest task stays
// the same RUNNING task: a controller that disabled the plugin or failed
// its task would show within it (swarmkit retries a failed step after 1 s).
func (s *scenarioRun) stable(ctx context.Context, name, id string, period time.Duration) error {
	st := s.observe(ctx, name)
	first := st.newestTask()
	if first == nil {
		return fmt.Errorf("no task: %s", st)
	}
	deadline := time.Now().Add(period)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		t := st.newestTask()
		switch {
		case st.err != nil:
			return st.err
		case st.plugin == nil || !st.plugin.Enabled:
			return fmt.Errorf("plugin not enabled: %s", st)
		case id != "" && st.plugin.ID != id:
			return fmt.Errorf("plugin replaced, was %.12s: %s", id, st)
		case t == nil || t.ID != first.ID || t.Status.State != "running":
			return fmt.Errorf("task %.10s no longer the RUNNING task: %s", first.ID, st)
		case time.Now().After(deadline):
			s.notef("Settings.Env %q", st.plugin.Settings.Env)
			return nil
		}
		<-tick.C
		st = s.observe(ctx, name)
	}
}

// volumeServedBy checks that the volume exists and that the plugin
// version tag answers for it (volplugin reports its tag in the volume's
// Status).
func (s *scenarioRun) volumeServedBy(ctx context.Context, vol, tag string) error {
	v, err := s.d.Client.VolumeInspect(ctx, vol)
	if err != nil {
		return err
	}
	s.notef("volume status %v", v.Status)
	if got := fmt.Sprint(v.Status["tag"]); got != tag {
		return fmt.Errorf("volume %s is answered by plugin version %q, want %q (status %v)", vol, got, tag, v.Status)
	}
	return nil
}
