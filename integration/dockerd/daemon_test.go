//go:build linux

package dockerd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/moby/sys/mount"

	"github.com/seed-e85c93d5/plugin/internal/keptplugins"
)

// dockerdFlags are the flags every dockerd of the harness gets besides its
// paths (NOTES.md, "A forked dockerd on this machine"): the plugin runtime
// needs --experimental; the rest keeps dockerd off the host's network
// configuration and storage.
var dockerdFlags = []string{
	"--experimental",
	"--userland-proxy=false",
	"--storage-driver", "vfs",
	"--iptables=false", "--ip6tables=false",
	"--bridge=none", "--ip-masq=false",
	"--log-level", "info",
}

// Daemon is one dockerd of a build (a release in a flavor) with a
// containerd of its own, all state in a private directory under /tmp
// (short: unix socket paths are limited to 108 bytes). Start and Stop may
// be repeated; the data root is kept between them, as a daemon restart
// keeps /var/lib/docker. Close ends everything and removes the directory.
type Daemon struct {
	Flavor flavor         // stock or fork, of the release Moby
	Moby   *mobyRelease   // the release
	Client *client.Client // valid from newDaemon to Close, across restarts

	bin        *dockerdBuild
	dir        string
	containerd *process
	dockerd    *process        // nil while stopped
	links      map[string]bool // the host's network interfaces before
	hostDirs   map[string]bool // which of hostDirs existed before
	swarmAddr  string          // the swarm listen address, once in a swarm
	// gwBridge is the Linux name of the bridge of the daemon's
	// docker_gwbridge network: docker_gwbridge, as dockerd names it, unless
	// JoinSwarm created the network with a name of its own.
	gwBridge string
}

// defaultGWBridge is the name of the network dockerd creates for a swarm
// node's ingress sandbox, and of its bridge.
const defaultGWBridge = "docker_gwbridge"

// hostDirs are directories outside its own that the daemon creates if they
// are missing: containerd's shims put their sockets in /run/containerd/s,
// dockerd watches /run/docker/plugins for plugin sockets. Close removes
// those that did not exist before, if they are empty.
var hostDirs = []string{"/run/containerd/s", "/run/containerd", "/run/docker/plugins", "/run/docker"}

func (d *Daemon) path(name string) string { return filepath.Join(d.dir, name) }

// Layout of d.dir.
const (
	containerdConfig = "containerd.toml"
	containerdSocket = "c.sock"
	containerdLog    = "containerd.log"
	dockerdSocket    = "d.sock"
	dockerdLog       = "dockerd.log"
	dataRoot         = "data"
	execRoot         = "exec"
)

// newDaemon creates the directory of a daemon of the build bin (built:
// see requireBuild) and starts its containerd; dockerd itself starts with
// Start. The caller must call Close, even on error.
func newDaemon(ctx context.Context, bin *dockerdBuild) (*Daemon, error) {
	links, err := netLinks()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "dk")
	if err != nil {
		return nil, err
	}
	d := &Daemon{Flavor: bin.flavor, Moby: bin.moby, bin: bin, dir: dir, links: links, hostDirs: map[string]bool{}, gwBridge: defaultGWBridge}
	for _, dir := range hostDirs {
		_, err := os.Stat(dir)
		d.hostDirs[dir] = err == nil
	}
	d.Client, err = client.NewClientWithOpts(client.WithHost("unix://"+d.path(dockerdSocket)), client.WithAPIVersionNegotiation())
	if err != nil {
		return d, err
	}
	// The opt plugin's directory is /opt/containerd unless set: it would
	// be created on the host.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, d.path("c-root"), d.path("c-state"), d.path(containerdSocket), d.path("c-opt"))
	if err := os.WriteFile(d.path(containerdConfig), []byte(config), 0o644); err != nil {
		return d, err
	}
	d.containerd, err = startProcess("containerd", d.path(containerdLog), d.env(),
		"containerd", "--config", d.path(containerdConfig))
	if err != nil {
		return d, err
	}
	err = waitReady(ctx, d.containerd, d.path(containerdLog), func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "unix", d.path(containerdSocket))
		if err == nil {
			c.Close()
		}
		return err
	})
	return d, err
}

// Start starts dockerd on the daemon's data root and returns once its API
// answers. A daemon that was in a swarm rejoins it by itself.
func (d *Daemon) Start(ctx context.Context) error {
	if d.dockerd != nil {
		return errors.New("dockerd is already running")
	}
	if err := os.WriteFile(d.path("daemon.json"), []byte("{}\n"), 0o644); err != nil {
		return err
	}
	args := append([]string{d.bin.path,
		"--config-file", d.path("daemon.json"),
		"--data-root", d.path(dataRoot),
		"--exec-root", d.path(execRoot),
		"--pidfile", d.path("dockerd.pid"),
		"--containerd", d.path(containerdSocket),
		"-H", "unix://" + d.path(dockerdSocket),
	}, dockerdFlags...)
	p, err := startProcess("dockerd "+d.Name(), d.path(dockerdLog), d.env(), args...)
	if err != nil {
		return err
	}
	d.dockerd = p
	return waitReady(ctx, p, d.path(dockerdLog), func(ctx context.Context) error {
		_, err := d.Client.Ping(ctx)
		return err
	})
}

// Stop sends dockerd SIGTERM and waits for it to exit, as a service
// manager stops the daemon. It keeps the data root and containerd.
func (d *Daemon) Stop() error {
	if d.dockerd == nil {
		return nil
	}
	err := d.dockerd.stop(syscall.SIGTERM, time.Minute)
	d.dockerd = nil
	return err
}

// Restart stops dockerd and starts it again on the same data root.
func (d *Daemon) Restart(ctx context.Context) error {
	if err := d.Stop(); err != nil {
		return err
	}
	return d.Start(ctx)
}

// InitSwarm makes the daemon a one-node swarm on loopback and waits until
// it is an active manager. The swarm listens on a free port rather than
// 2377, so that it does not clash with another daemon on the machine.
func (d *Daemon) InitSwarm(ctx context.Context) error {
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	if _, err := d.Client.SwarmInit(ctx, swarm.InitRequest{ListenAddr: addr, AdvertiseAddr: "127.0.0.1"}); err != nil {
		return err
	}
	d.swarmAddr = addr
	return d.waitSwarm(ctx, true)
}

// JoinSwarm makes the daemon a worker of manager's swarm, listening on a
// free port of host and advertising host, and waits until it is an active
// node. host must be a loopback address other than the manager's and any
// other daemon's of the swarm: libnetwork's gossip (networkdb) binds port
// 7946 on the host of the swarm listen address, with no way to choose the
// port, so two daemons on one address clash (the second logs "Error in
// agentInit ... 127.0.0.1:7946: bind: address already in use" and takes
// 5 s longer to stop). Before the join, it creates the docker_gwbridge
// network itself with a bridge named after the daemon's directory: dockerd
// would otherwise give it the Linux name docker_gwbridge, which the
// manager's already has on this host, and reuse that bridge. (On this
// machine the worker's ingress sandbox fails before it needs the gateway:
// the manager's ingress VXLAN has the same VNI in the same network
// namespace, "error creating vxlan interface: file exists". That is
// harmless for plugin services, as the manager's own ingress errors are.)
func (d *Daemon) JoinSwarm(ctx context.Context, manager *Daemon, host string) error {
	if manager.swarmAddr == "" {
		return errors.New("the manager has no swarm address")
	}
	sw, err := manager.Client.SwarmInspect(ctx)
	if err != nil {
		return err
	}
	if err := d.createGWBridge(ctx, "gw"+filepath.Base(d.dir)); err != nil {
		return err
	}
	addr, err := freeAddr(host)
	if err != nil {
		return err
	}
	err = d.Client.SwarmJoin(ctx, swarm.JoinRequest{
		ListenAddr:    addr,
		AdvertiseAddr: host,
		RemoteAddrs:   []string{manager.swarmAddr},
		JoinToken:     sw.JoinTokens.Worker,
	})
	if err != nil {
		return err
	}
	d.swarmAddr = addr
	return d.waitSwarm(ctx, false)
}

// createGWBridge creates the docker_gwbridge network with the options
// dockerd gives it (libnetwork's createGWNetwork), but with the Linux
// bridge name bridge (at most 15 bytes), as Docker's documentation has
// one customise the network before joining a swarm. dockerd uses a
// docker_gwbridge network that exists, whatever its bridge.
func (d *Daemon) createGWBridge(ctx context.Context, bridge string) error {
	_, err := d.Client.NetworkCreate(ctx, defaultGWBridge, network.CreateOptions{
		Driver: "bridge",
		Options: map[string]string{
			"com.docker.network.bridge.name":                 bridge,
			"com.docker.network.bridge.enable_icc":           "false",
			"com.docker.network.bridge.enable_ip_masquerade": "true",
		},
	})
	if err != nil {
		return fmt.Errorf("creating %s with bridge %s: %w", defaultGWBridge, bridge, err)
	}
	d.gwBridge = bridge
	return nil
}

// waitSwarm waits until the daemon is an active swarm node, and a manager
// if manager is set.
func (d *Daemon) waitSwarm(ctx context.Context, manager bool) error {
	return poll(ctx, "the swarm to be active", func(ctx context.Context) (bool, string, error) {
		info, err := d.Client.Info(ctx)
		if err != nil {
			return false, "", err
		}
		s := info.Swarm
		return s.LocalNodeState == swarm.LocalNodeStateActive && (s.ControlAvailable || !manager),
			fmt.Sprintf("state %s, manager %v, error %q", s.LocalNodeState, s.ControlAvailable, s.Error), nil
	})
}

// freeAddr returns host with a port that is free at the moment.
func freeAddr(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// removeGWBridge removes docker_gwbridge after a swarm leave. The leave
// tears the ingress sandbox down in the background; its endpoint on
// docker_gwbridge goes with it, and then the network can go.
func (d *Daemon) removeGWBridge(ctx context.Context) error {
	return poll(ctx, "docker_gwbridge removed", func(ctx context.Context) (bool, string, error) {
		err := d.Client.NetworkRemove(ctx, "docker_gwbridge")
		switch {
		case err == nil || cerrdefs.IsNotFound(err):
			return true, "", nil
		case strings.Contains(err.Error(), "active endpoints"):
			return false, err.Error(), nil
		}
		return false, "", err
	})
}

// ensureSwarm brings the daemon back to the state a scenario starts from,
// whatever the last one left: dockerd running (a restart that failed half
// way may have left it stopped) and an active swarm manager. It waits for a
// restarted daemon to rejoin its swarm, and makes a daemon that left the
// swarm (or lost its state) a new one-node swarm, as after a leave.
func (d *Daemon) ensureSwarm(ctx context.Context) error {
	if d.dockerd == nil {
		if err := d.Start(ctx); err != nil {
			return err
		}
	}
	inactive := false
	err := poll(ctx, "the swarm to be active", func(ctx context.Context) (bool, string, error) {
		info, err := d.Client.Info(ctx)
		if err != nil {
			return false, "", err
		}
		s := info.Swarm
		inactive = s.LocalNodeState == swarm.LocalNodeStateInactive
		return inactive || (s.LocalNodeState == swarm.LocalNodeStateActive && s.ControlAvailable),
			fmt.Sprintf("state %s, manager %v, error %q", s.LocalNodeState, s.ControlAvailable, s.Error), nil
	})
	if err != nil || !inactive {
		return err
	}
	return d.reinitSwarm(ctx)
}

// reinitSwarm makes a daemon that left its swarm a one-node swarm again,
// after removing the docker_gwbridge of the old one, so that the new swarm
// starts as the first did.
func (d *Daemon) reinitSwarm(ctx context.Context) error {
	if err := d.removeGWBridge(ctx); err != nil {
		return err
	}
	return d.InitSwarm(ctx)
}

// keptRecord is the file where the fork's plugin controllers record the
// plugins they keep across a daemon restart (plugin.RestartSafe with the
// data root); it exists only while plugins are kept. Stock never writes it.
func (d *Daemon) keptRecord() string {
	return filepath.Join(d.path(dataRoot), keptplugins.FileName)
}

// Close leaves the swarm, removes docker_gwbridge, stops dockerd and
// containerd, kills any shim left over, deletes the network interfaces the
// daemon created, unmounts everything under the daemon's directory and
// removes it. It reports every failure and goes on.
func (d *Daemon) Close() error {
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if d.dockerd != nil && d.dockerd.running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := d.Client.SwarmLeave(ctx, true); err != nil && !strings.Contains(err.Error(), "not part of a swarm") {
			note(fmt.Errorf("swarm leave: %w", err))
		}
		note(d.removeGWBridge(ctx))
		cancel()
	}
	note(d.Stop())
	if d.containerd != nil {
		note(d.containerd.stop(syscall.SIGTERM, 30*time.Second))
		pids, err := killShims(d.path(containerdSocket))
		note(err)
		if len(pids) > 0 {
			note(fmt.Errorf("killed processes left by containerd: %v", pids))
		}
	}
	if d.Client != nil {
		note(d.Client.Close())
	}
	note(d.deleteNewLinks())
	note(mount.RecursiveUnmount(d.dir))
	note(os.RemoveAll(d.dir))
	for _, dir := range hostDirs {
		if !d.hostDirs[dir] {
			_ = os.Remove(dir) // fails if not empty: then it is in use
		}
	}
	return errors.Join(errs...)
}

// deleteNewLinks deletes the bridges and veths that appeared on the host
// since newDaemon: its docker_gwbridge network's bridge (d.gwBridge) and
// the veths attached to it or to no bridge. After a swarm leave and the
// removal of docker_gwbridge there should be none, but a sandbox's veth
// may outlive dockerd briefly. Another daemon's veths are attached to its
// own bridge and stay; another program creating such links meanwhile
// would lose them: the harness runs on test machines only.
func (d *Daemon) deleteNewLinks() error {
	now, err := netLinks()
	if err != nil {
		return err
	}
	var errs []error
	for name := range now {
		if d.links[name] || !(name == d.gwBridge || strings.HasPrefix(name, "veth") && d.ownsVeth(name)) {
			continue
		}
		// A veth of a sandbox dockerd tore down as it stopped may linger
		// for a moment; deleting it is the cleanup, only a failure is one.
		if out, err := exec.Command("ip", "link", "delete", name).CombinedOutput(); err != nil {
			if _, gone := os.Stat(filepath.Join("/sys/class/net", name)); !os.IsNotExist(gone) {
				errs = append(errs, fmt.Errorf("deleting link %s left by dockerd: %v: %s", name, err, out))
			}
		}
	}
	return errors.Join(errs...)
}

// ownsVeth reports whether the veth called name is attached to the
// daemon's docker_gwbridge bridge, or to none.
func (d *Daemon) ownsVeth(name string) bool {
	master, err := os.Readlink(filepath.Join("/sys/class/net", name, "master"))
	return err != nil || filepath.Base(master) == d.gwBridge
}

// netLinks returns the names of the host's network interfaces.
func netLinks() (map[string]bool, error) {
	entries, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil, err
	}
	links := map[string]bool{}
	for _, e := range entries {
		links[e.Name()] = true
	}
	return links, nil
}

// Name is the name of the daemon's build, as in "v28-stock".
func (d *Daemon) Name() string { return d.bin.name() }

// env is the environment of the daemon's containerd and dockerd: the
// test's, without proxy settings, which must not apply to the loopback
// registry, and with the build's runc directory, if any, first on the PATH
// (containerd's shim runs the runc it finds there).
func (d *Daemon) env() []string {
	var env []string
	path := "PATH=" + d.bin.runcDir
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasSuffix(strings.ToLower(k), "_proxy"):
		case k == "PATH" && d.bin.runcDir != "":
			path += string(os.PathListSeparator) + v
		default:
			env = append(env, kv)
		}
	}
	if d.bin.runcDir != "" {
		env = append(env, path)
	}
	return env
}

// waitReady polls ready until it succeeds, failing early if p exits; the
// error then holds the end of p's log.
func waitReady(ctx context.Context, p *process, logPath string, ready func(context.Context) error) error {
	err := poll(ctx, p.name+" to be ready", func(ctx context.Context) (bool, string, error) {
		if !p.running() {
			return false, "", fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		err := ready(ctx)
		return err == nil, fmt.Sprint(err), nil
	})
	if err != nil {
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w\n%s", err, tail(string(log), 20))
	}
	return nil
}

// logMessages returns the lines of dockerd's log from byte offset on
// whose message holds one of msgs, without their time.
func (d *Daemon) logMessages(offset int64, msgs ...string) []string {
	log, _ := d.logSince(offset)
	var lines []string
	for _, line := range strings.Split(log, "\n") {
		m := logLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, msg := range msgs {
			if strings.Contains(m[2], msg) {
				lines = append(lines, "level="+m[1]+" "+m[2])
				break
			}
		}
	}
	return lines
}

// logSince returns dockerd's log from byte offset on, and the offset of
// its end.
func (d *Daemon) logSince(offset int64) (string, int64) {
	log, err := os.ReadFile(d.path(dockerdLog))
	if err != nil || int64(len(log)) < offset {
		return "", int64(len(log))
	}
	return string(log[offset:]), int64(len(log))
}
