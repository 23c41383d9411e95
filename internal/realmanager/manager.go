//go:build linux

package realmanager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/events"
	registrytypes "github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/plugin"
	"github.com/docker/docker/registry"
	"github.com/moby/sys/mount"
	"golang.org/x/sys/unix"
)

// Supported reports whether this process can drive the real Manager. It
// returns nil on linux when running as root with the privileges that
// plugin unpacking (moby's chrootarchive) needs: creating a mount namespace
// (CAP_SYS_ADMIN), bind-mounting and chrooting. Otherwise the error's text
// is a reason fit to print or to pass to testing.T.Skip.
//
// The probe runs on a dedicated OS thread that is discarded afterwards, so it
// leaves the process's namespaces untouched.
func Supported() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("realmanager: the real plugin.Manager needs root (euid is %d)", os.Geteuid())
	}
	dir, err := os.MkdirTemp("", "pe-probe")
	if err != nil {
		return fmt.Errorf("realmanager: %w", err)
	}
	defer os.Remove(dir)

	errc := make(chan error, 1)
	go func() {
		// The thread's fs attributes and mount namespace are changed below.
		// It is never unlocked, so the runtime destroys it when this
		// goroutine returns instead of reusing it.
		runtime.LockOSThread()
		errc <- probeChroot(dir)
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("realmanager: the real plugin.Manager unpacks plugins in a private mount namespace, which this process cannot create (CAP_SYS_ADMIN missing?): %w", err)
	}
	return nil
}

// probeChroot does on the current thread what chrootarchive does before it
// unpacks a layer.
func probeChroot(dir string) error {
	if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare(CLONE_FS|CLONE_NEWNS): %w", err)
	}
	if err := mount.MakeRSlave("/"); err != nil {
		return fmt.Errorf("make / rslave: %w", err)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	if err := unix.Chroot(dir); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return nil
}

// Option configures [NewManager].
type Option func(*options)

type options struct {
	logEvent func(id, name string, action events.Action)
}

// WithEventLog makes the Manager forward its daemon event log
// (ManagerConfig.LogPluginEvent: pull, create, enable, disable, remove) to
// fn. fn is called synchronously from the Manager's goroutines and must be
// safe for concurrent use. Without this option the log is discarded.
func WithEventLog(fn func(id, name string, action events.Action)) Option {
	return func(o *options) { o.logEvent = fn }
}

// Manager is a real moby *plugin.Manager (embedded: it satisfies the root
// package's Backend and Setter) with its own temporary Root and ExecRoot
// and a fake executor:
//
//   - Create (called by Enable, and by the Manager itself to restart a
//     plugin that exited) listens on ExecRoot/<id>/<socket> and serves HTTP
//     there, answering POST /Plugin.Activate with the plugin's interfaces.
//     No process runs.
//   - Signal (called by Disable, a forced Remove and Shutdown) closes that
//     listener and reports the exit to the Manager (HandleExitEvent) from
//     another goroutine, as containerd's exit event would.
//
// Use it like the Manager of a daemon. After [Manager.Close], neither it nor
// the embedded *plugin.Manager may be used.
type Manager struct {
	*plugin.Manager

	base string // holds Root ("r") and ExecRoot ("e")
	exec *executor
	cfg  plugin.ManagerConfig // for Restart, with the first Store

	closeOnce sync.Once
	closeErr  error
}

// NewManager creates a Manager with an empty store in fresh temporary
// directories. It does not check [Supported]: creating and enabling work
// without privileges, pulling and creating plugins do not. The caller must
// call [Manager.Close].
func NewManager(opts ...Option) (*Manager, error) {
	o := options{logEvent: func(string, string, events.Action) {}}
	for _, opt := range opts {
		opt(&o)
	}

	// Unix socket paths are limited to 108 bytes and the plugin sockets live
	// at <ExecRoot>/<64 hex ID>/<socket>: keep the base directory short.
	tmp := os.TempDir()
	if len(tmp) > 16 {
		tmp = "/tmp"
	}
	base, err := os.MkdirTemp(tmp, "pe")
	if err != nil {
		return nil, fmt.Errorf("realmanager: %w", err)
	}
	regService, err := registry.NewService(registry.ServiceOptions{})
	if err != nil {
		_ = os.RemoveAll(base)
		return nil, fmt.Errorf("realmanager: registry service: %w", err)
	}

	exec := newExecutor(filepath.Join(base, "e"))
	cfg := plugin.ManagerConfig{
		Store:           plugin.NewStore(),
		RegistryService: regService,
		LogPluginEvent:  o.logEvent,
		Root:            filepath.Join(base, "r"),
		ExecRoot:        exec.root,
		CreateExecutor: func(pm *plugin.Manager) (plugin.Executor, error) {
			exec.pm = pm
			return exec, nil
		},
	}
	pm, err := plugin.NewManager(cfg)
	if err != nil {
		_ = mount.RecursiveUnmount(base)
		_ = os.RemoveAll(base)
		return nil, fmt.Errorf("realmanager: %w", err)
	}
	return &Manager{Manager: pm, base: base, exec: exec, cfg: cfg}, nil
}

// Restart stops the Manager as a daemon stop does (Shutdown: every enabled
// plugin is stopped, and stays enabled on disk) and starts a new
// *plugin.Manager on the same directories, as the daemon's next start does:
// it reloads the installed plugins and enables again those that were
// enabled. Nothing of the old Manager's memory survives: its *v2.Plugin
// objects, their reference counts, its event subscriptions. Restart must not
// be called concurrently with other methods.
func (m *Manager) Restart() error {
	m.Manager.Shutdown()
	m.exec.wait()
	if err := m.exec.closeAll(); err != nil {
		return fmt.Errorf("realmanager: restart: %w", err)
	}
	cfg := m.cfg
	cfg.Store = plugin.NewStore()
	pm, err := plugin.NewManager(cfg)
	if err != nil {
		return fmt.Errorf("realmanager: restart: %w", err)
	}
	m.Manager = pm
	return nil
}

// Root returns the Manager's root directory (ManagerConfig.Root).
func (m *Manager) Root() string { return filepath.Join(m.base, "r") }

// Running reports whether the fake executor is serving the plugin with the
// given full ID, that is, whether the plugin's "process" is running.
func (m *Manager) Running(id string) bool {
	ok, _ := m.exec.IsRunning(id)
	return ok
}

// SimulateExit makes the running plugin with the given full ID exit
// unexpectedly, as if its process had crashed, and returns once the Manager
// has handled the exit. The Manager then restarts an enabled plugin (through
// the executor's Create, without publishing any event), which takes it about
// 500 ms.
func (m *Manager) SimulateExit(id string) error {
	if err := m.exec.stop(id); err != nil {
		return err
	}
	return m.Manager.HandleExitEvent(id)
}

// RequiredPrivileges returns the privileges that the plugin at ref (a
// reference such as "127.0.0.1:5000/vol:v1") requires, in the form that
// Pull and Upgrade expect to be granted. It wraps the embedded Manager's
// Privileges with no extra headers and empty credentials.
//
// Beware that moby returns empty privileges and no error when it cannot
// fetch the plugin's config (registry down, unknown reference): an empty
// result is only meaningful for a reference known to exist.
func (m *Manager) RequiredPrivileges(ctx context.Context, ref string) (types.PluginPrivileges, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("realmanager: %w", err)
	}
	return m.Manager.Privileges(ctx, named, nil, &registrytypes.AuthConfig{})
}

// Close shuts the Manager down: it stops every enabled plugin (Shutdown),
// waits for the exits to be handled, unmounts whatever is left under its
// root and removes its directories. No goroutine of the fixture survives it.
// Two kinds of moby goroutines may: a garbage collection that a recent
// Remove started in the background (it ends within milliseconds), and the
// idle keep-alive connections of moby's registry clients, which last until
// the registry closes them or for 30 s. Close may be called more than once
// but not concurrently with other methods.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.Manager.Shutdown()
		m.exec.wait()
		var errs []error
		if err := mount.RecursiveUnmount(m.base); err != nil {
			errs = append(errs, fmt.Errorf("unmount: %w", err))
		}
		if err := os.RemoveAll(m.base); err != nil {
			errs = append(errs, err)
		}
		if err := m.exec.closeAll(); err != nil {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			m.closeErr = fmt.Errorf("realmanager: close: %w", err)
		}
	})
	return m.closeErr
}

// SkipUnsupported ends t when the real Manager cannot run on this machine
// (Supported fails): a skip that names the reason, or, under CI (CI=true,
// as .ci/run runs), a failure, since CI installs and runs everything and a
// skipped test is not a pass there.
func SkipUnsupported(t testing.TB) {
	t.Helper()
	err := Supported()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI must run this test: %v", err)
	}
	t.Skip(err.Error())
}
