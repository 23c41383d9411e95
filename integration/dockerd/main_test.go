//go:build linux

// Package dockerd_test proves the controller embedded in a forked Docker
// daemon, end to end, on two moby releases: docker/docker v28.3.0 and moby
// v2 v2.0.0-beta.24. It builds each release's dockerd as released (stock)
// and with this repository's controller swapped in (fork: the root module
// for v28, mobyv2/ for v2), starts each of the four in turn with a
// containerd of its own as a one-node swarm (scenario (h) adds a second
// daemon of the same build as a worker), and drives plugin services
// through the Docker API with a real managed plugin (volplugin, run by
// runc) pulled from a registry on loopback. It records each scenario's
// steps on every daemon and prints them side by side; the forks must pass
// every scenario.
//
// It needs root with CAP_SYS_ADMIN and containerd, containerd-shim-runc-v2
// and runc on the PATH (Debian: apt-get install containerd runc), and, for
// moby v2, a runc of 1.2 or later (runc_test.go finds or builds one). It
// skips, naming what is missing, without them or with -short; under CI=true
// it fails instead. See README.md.
package dockerd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	rm "github.com/seed-e85c93d5/plugin/internal/realmanager"
)

// shared is what every test of the binary shares, set up on first use by
// setup and torn down after the tests by TestMain: the plugin binary, the
// directory the dockerd builds go to (each built on first use, see
// requireBuild) and the registry the plugins are published to.
var shared struct {
	once  sync.Once
	err   error
	root  string // the repository
	bins  *binaries
	reg   *registry
	setup time.Duration

	mu        sync.Mutex
	published *published // on the registry, by the first daemon started
}

type testMain struct{ m *testing.M }

// Run runs the tests, then closes the registry and removes the binaries
// before goleak looks for leaked goroutines.
func (tm testMain) Run() int {
	code := tm.m.Run()
	var errs []error
	if shared.reg != nil {
		errs = append(errs, shared.reg.Close())
	}
	if shared.bins != nil {
		errs = append(errs, os.RemoveAll(shared.bins.dir))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "tearing down:", err)
		code = 1
	}
	return code
}

// TestMain checks for leaked goroutines. Every process wait, client
// connection and registry goroutine ends when the test that started it
// closes its daemon, or in teardown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testMain{m})
}

// requireHost skips t, naming what is missing, unless this machine can
// run dockerd: root with CAP_SYS_ADMIN (checked the way moby's plugin
// manager needs it) and containerd's and runc's binaries.
func requireHost(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the forked-daemon test builds four dockerd binaries and runs them")
	}
	if missing := hostMissing(); missing != "" {
		missingPrerequisite(t, missing, "Debian: apt-get install containerd runc; run as root")
	}
}

// missingPrerequisite skips t because it needs what, or, under CI
// (CI=true), fails it: .ci/run installs and runs everything, so there a
// skip is not a pass. hint says how to get it.
func missingPrerequisite(t *testing.T, what, hint string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI must run this test, but it needs %s (.ci/dockerd-deps installs containerd and runc, and builds runc 1.2 into $%s)", what, runcDirEnv)
	}
	t.Skipf("needs %s (%s)", what, hint)
}

// hostMissing lists what this machine lacks to run dockerd, or is empty.
// It is computed once: the CAP_SYS_ADMIN probe ends an OS thread, which
// must not happen while the harness's children run (they get SIGKILL when
// the thread that started them ends; see startProcess).
var hostMissing = sync.OnceValue(func() string {
	var missing []string
	if euid := os.Geteuid(); euid != 0 {
		missing = append(missing, fmt.Sprintf("root (euid is %d)", euid))
	} else if err := rm.Supported(); err != nil {
		missing = append(missing, "CAP_SYS_ADMIN, which dockerd needs to unpack plugins: "+err.Error())
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" on the PATH")
		}
	}
	return strings.Join(missing, "; ")
})

// setup builds the plugin and starts the registry, once per test binary
// run.
func setup(t *testing.T) {
	t.Helper()
	shared.once.Do(func() {
		start := time.Now()
		ctx := context.Background()
		shared.root, shared.err = moduleRoot(ctx)
		if shared.err != nil {
			return
		}
		digest, err := sourceDigest(ctx, shared.root)
		if err != nil {
			shared.err = err
			return
		}
		t.Logf("module sources of the forks and the plugin: digest %s; building the plugin", digest)
		if shared.bins, shared.err = buildShared(ctx, shared.root); shared.err != nil {
			return
		}
		t.Logf("built: %v", shared.bins)
		shared.reg, shared.err = startRegistry()
		shared.setup = time.Since(start)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
}

// requireBuild makes sure that b's daemons can run: for a release whose
// plugins need runc 1.2, that one is found (findRunc12; a missing one skips
// t, or fails it under CI); then that b is built (the first call builds
// it). setup must have run.
func requireBuild(t *testing.T, b *dockerdBuild) {
	t.Helper()
	if b.moby.runc12 {
		r, err := findRunc12()
		if err != nil {
			missingPrerequisite(t, "runc 1.2 or later for "+b.moby.title+"'s plugins: "+err.Error(),
				"$"+runcDirEnv+" names a directory with one; .ci/dockerd-deps builds it")
		}
		b.runcDir = r.dir
		t.Logf("%s's daemons use %s", b.moby.title, r.desc)
	}
	built := b.path != ""
	if err := b.ensure(context.Background(), shared.root, shared.bins.dir); err != nil {
		t.Fatal(err)
	}
	if !built {
		msg := fmt.Sprintf("built dockerd %s from %s in %.1f s", b.name(), b.moby.title, b.took.Seconds())
		if b.flavor == fork {
			msg += fmt.Sprintf(" (swapped in %s: %s)", b.moby.ours, strings.Join(b.importers, ", "))
		}
		t.Log(msg)
	}
}

// startDaemon starts a daemon of build b as a one-node swarm and publishes
// the plugins through it if no daemon has yet. The daemon is closed when t
// ends.
func startDaemon(t *testing.T, b *dockerdBuild) (*Daemon, *published) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	d, err := newDaemon(ctx, b)
	if d != nil {
		t.Cleanup(func() {
			if err := d.Close(); err != nil {
				t.Errorf("closing dockerd %s: %v", b.name(), err)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.InitSwarm(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("dockerd %s (pid %d) is a swarm manager after %.1f s", b.name(), d.dockerd.pid(), time.Since(start).Seconds())

	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.published == nil {
		start := time.Now()
		p, err := publish(ctx, d.Client, shared.reg.Host(), shared.bins.plugin)
		if err != nil {
			t.Fatal(err)
		}
		shared.published = p
		t.Logf("published %s and %s through dockerd %s in %.1f s", p.v1, p.v2, b.name(), time.Since(start).Seconds())
	}
	return d, shared.published
}
