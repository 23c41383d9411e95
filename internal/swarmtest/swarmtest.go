// Package swarmtest runs a real swarmkit cluster in the current process: one
// manager and any number of workers, each a full swarmkit node.Node whose
// agent runs plugin tasks through its own executor.Executor and
// plugin.Backend. It is used by the cluster tests and by cmd/demo.
//
// A Cluster is started with Start and must be stopped with Stop. Its helpers
// drive plugin services through the manager's control API the way the Docker
// daemon does (a plugin service is always global, its task runtime is the
// generic "plugin" spec) and wait for task states through the watch API.
//
// A node can be stopped and started again in process, the way a Docker
// daemon stops and restarts, with the same state dir and the same plugin
// Backend: Node.Shutdown (a daemon shutdown), Node.Leave ("docker swarm
// leave"), Node.Restart (the daemon starts again) and Node.Rejoin (it starts
// again after its swarm state was wiped, and joins as a new node). With
// Options.RestartSafe, every node runs its executor under plugin.RestartSafe,
// as a daemon with the fix of issue 16 does.
//
// swarmkit logs a lot. Unless Options.Verbose is set, a Cluster discards the
// logs of its nodes, and Start also discards the output of logrus's standard
// logger, which swarmkit and the plugin controller use wherever no logger
// travels in a context. That is a process-wide change, made for tests and
// demos; it is not undone by Stop.
package swarmtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	clog "github.com/containerd/log"
	"github.com/docker/docker/api/types/swarm/runtime"
	"github.com/moby/swarmkit/v2/agent/exec"
	"github.com/moby/swarmkit/v2/api"
	swarmlog "github.com/moby/swarmkit/v2/log"
	"github.com/moby/swarmkit/v2/manager/allocator/networkallocator"
	"github.com/moby/swarmkit/v2/node"
	"github.com/seed-e85c93d5/plugin/plugintest"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/executor"
)

// Options configures a Cluster.
type Options struct {
	// Workers is the number of worker nodes Start joins after the manager.
	Workers int

	// NewBackend returns the plugin backend of a new node; it is called once
	// per node, with the node's hostname ("manager", "worker-1", ...).
	// Required.
	NewBackend func(hostname string) (plugin.Backend, error)

	// ExecutorOptions are applied to every node's executor, after the
	// hostname option.
	ExecutorOptions []executor.Option

	// RestartSafe wraps every node's executor with plugin.RestartSafe
	// (executor, backend, Node.KeepDir()) each time the node starts, as a
	// daemon with the fix of issue 16 does, so that Node.Shutdown keeps
	// the node's plugins for its Restart while Node.Leave removes them.
	// Without it, a node runs the plain executor, as upstream does, and
	// Shutdown removes its plugins like Leave.
	RestartSafe bool

	// Verbose sends swarmkit's logs (level info and above) to LogOutput.
	Verbose bool
	// LogOutput receives the logs when Verbose is set; os.Stderr if nil.
	LogOutput io.Writer
}

// Node is one node of a Cluster.
//
// A node runs from the Start or AddWorker that created it until it is
// stopped (Shutdown, Leave, or the Cluster's Stop); a stopped node can be
// started again (Restart, Rejoin) until the Cluster stops. Each start runs a
// new swarmkit node.Node on the same state dir, Backend and Executor, the
// way a daemon that restarts keeps its data root and its plugin Manager's
// state on disk. Its methods are safe for concurrent use; the stops and
// starts of one node are serialised.
type Node struct {
	// Hostname is the node's name: "manager", "worker-1", "worker-2", ...
	Hostname string
	// Manager tells whether the node was started as the cluster's manager.
	Manager bool
	// Backend is the plugin backend the node's executor runs tasks against.
	// It is the same across restarts.
	Backend plugin.Backend
	// Executor is the node's executor. It is the same across restarts (its
	// only state is the node object swarmkit configures it with); with
	// Options.RestartSafe, each start hands swarmkit a new plugin.RestartSafe
	// wrapper of it.
	Executor *executor.Executor

	c        *Cluster
	stateDir string // the swarm state: what Rejoin wipes
	keepDir  string // plugin.RestartSafe's record; survives Rejoin
	listen   string // ListenRemoteAPI; the manager's bound address once known

	opMu     sync.Mutex // serialises starts and stops
	closed   bool       // stopped for good and dirs removed (Cluster.Stop); under opMu
	closeErr error

	mu      sync.Mutex // guards the fields below
	node    *node.Node // the current (or last) run; nil before the first
	running bool       // started and not stopped since
}

// ID returns the node's swarm ID, that of its current or last run ("" before
// it has one). A Rejoin gives the node a new ID.
func (n *Node) ID() string {
	sn := n.SwarmNode()
	if sn == nil {
		return ""
	}
	return sn.NodeID()
}

// SwarmNode returns the underlying swarmkit node of the current or last
// run; each start replaces it.
func (n *Node) SwarmNode() *node.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.node
}

// Running reports whether the node runs: it was started and not stopped
// since.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running
}

// StateDir returns the node's swarm state directory (certificates, task
// database, raft for the manager), the same across restarts. Rejoin wipes
// it. It is removed when the Cluster stops.
func (n *Node) StateDir() string { return n.stateDir }

// KeepDir returns the directory the node's plugin.RestartSafe executor
// keeps its record of kept plugins in (see Options.RestartSafe), and that
// Shutdown passes to plugin.ShuttingDown: a daemon's data root, outside the
// swarm state. It exists whether or not Options.RestartSafe is set, is the
// same across restarts, survives Rejoin, and is removed when the Cluster
// stops.
func (n *Node) KeepDir() string { return n.keepDir }

// Shutdown stops the node the way a daemon stops it when it shuts down:
// plugin.ShuttingDown(KeepDir()), then the swarmkit node's Stop. With
// Options.RestartSafe the node's plugins stay installed for Restart;
// without, ShuttingDown does nothing (no executor has that dir) and the
// node's plugins are removed as upstream removes them. The swarmkit node
// calls the task controllers' Remove without waiting for it, so a removal
// may still be under way when Shutdown returns. ctx bounds the stop (at most
// 30 s). It fails if the node is not running.
func (n *Node) Shutdown(ctx context.Context) error {
	return n.halt(ctx, true)
}

// Leave stops the node the way "docker swarm leave" does: the swarmkit
// node's Stop without plugin.ShuttingDown, so the node's plugins are
// removed (and, with Options.RestartSafe, so are the plugins still kept
// from an earlier Shutdown). The daemon also wipes its swarm state then;
// Leave does not: Rejoin does. The manager keeps the node in its node list,
// DOWN once its heartbeat expires. Like Shutdown, Leave may return before
// the removals are done, and fails if the node is not running.
func (n *Node) Leave(ctx context.Context) error {
	return n.halt(ctx, false)
}

// Restart starts the stopped node again as the same swarm node: a new
// swarmkit node on the same state dir, Backend, Executor and KeepDir (a new
// plugin.RestartSafe wrapper with Options.RestartSafe), as a daemon that
// starts again does. A manager listens on the address it had. Restart
// returns once the swarmkit node is ready and the manager sees every
// running node READY. It fails if the node runs or the Cluster stopped.
func (n *Node) Restart(ctx context.Context) error {
	return n.start(ctx, false)
}

// Rejoin wipes the stopped worker's state dir, as when a daemon's swarm
// state is lost while it is down, and starts it again: it joins the cluster
// as a new node (the worker join token, the manager's address) with a new
// ID, on the same Backend, Executor and KeepDir, so that a RestartSafe
// executor finds the plugins its last Shutdown kept. The old node stays in
// the manager's list (DOWN once its heartbeat expires). Rejoin returns once
// the new node is ready and the manager sees it READY. It fails for the
// manager (the cluster's only one, whose state is the swarm), for a node
// that runs, and once the Cluster stopped.
func (n *Node) Rejoin(ctx context.Context) error {
	return n.start(ctx, true)
}

// halt stops the node; shuttingDown tells a daemon shutdown from a leave.
func (n *Node) halt(ctx context.Context, shuttingDown bool) error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if n.closed {
		return fmt.Errorf("swarmtest: %s: the cluster stopped", n.Hostname)
	}
	if !n.Running() {
		return fmt.Errorf("swarmtest: %s is not running", n.Hostname)
	}
	if shuttingDown {
		plugin.ShuttingDown(n.keepDir)
	}
	return n.stopLocked(ctx)
}

// start starts the stopped node again; wipe wipes its state first, so that
// it joins as a new node.
func (n *Node) start(ctx context.Context, wipe bool) error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	switch {
	case n.closed:
		return fmt.Errorf("swarmtest: %s: the cluster stopped", n.Hostname)
	case n.Running():
		return fmt.Errorf("swarmtest: %s is running; stop it first", n.Hostname)
	case wipe && n.Manager:
		return fmt.Errorf("swarmtest: %s is the cluster's manager; it cannot join as a new node", n.Hostname)
	}
	if wipe {
		if err := os.RemoveAll(n.stateDir); err != nil {
			return fmt.Errorf("swarmtest: wipe the state of %s: %w", n.Hostname, err)
		}
	}
	if err := n.run(ctx, wipe); err != nil {
		return err
	}
	if n.Manager {
		// The control connection lost the manager's socket; do not let
		// it wait out its reconnection backoff.
		n.c.conn.ResetConnectBackoff()
	}
	return n.c.waitNodesReady(ctx)
}

// run starts a new swarmkit node for n and waits until it is ready. join
// makes a worker join the cluster with the worker token; otherwise it
// starts from its state dir. The caller holds n.opMu.
func (n *Node) run(ctx context.Context, join bool) error {
	c := n.c
	var exe exec.Executor = n.Executor
	if c.opts.RestartSafe {
		safe, err := plugin.RestartSafe(n.Executor, n.Backend, n.keepDir)
		if err != nil {
			return fmt.Errorf("swarmtest: executor of %s: %w", n.Hostname, err)
		}
		exe = safe
	}
	cfg := &node.Config{
		Hostname:        n.Hostname,
		StateDir:        n.stateDir,
		ListenRemoteAPI: n.listen,
		Executor:        exe,
		NetworkProvider: inertNetworks{},
	}
	if n.Manager {
		cfg.ListenControlAPI = filepath.Join(n.stateDir, "control.sock")
	} else if join {
		cfg.JoinAddr = c.managerAddr
		cfg.JoinToken = c.workerToken
	}
	sn, err := node.New(cfg)
	if err != nil {
		return fmt.Errorf("swarmtest: new node %s: %w", n.Hostname, err)
	}
	n.mu.Lock()
	n.node, n.running = sn, true
	n.mu.Unlock()

	if err := sn.Start(c.ctx); err != nil {
		return fmt.Errorf("swarmtest: start node %s: %w", n.Hostname, err)
	}
	errc := make(chan error, 1)
	errCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errc <- sn.Err(errCtx) }()
	select {
	case <-sn.Ready():
	case err := <-errc:
		if errCtx.Err() == nil {
			return fmt.Errorf("swarmtest: node %s stopped before it was ready: %v", n.Hostname, err)
		}
		return fmt.Errorf("swarmtest: node %s not ready: %w", n.Hostname, ctx.Err())
	}
	if n.Manager {
		// Restarts listen where the workers know the manager is.
		addr, err := sn.RemoteAPIAddr()
		if err != nil {
			return fmt.Errorf("swarmtest: manager address: %w", err)
		}
		n.listen = addr
	}
	return nil
}

// stopLocked stops the running swarmkit node. The caller holds n.opMu.
func (n *Node) stopLocked(ctx context.Context) error {
	n.mu.Lock()
	sn := n.node
	n.running = false
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// A node whose Start was never called answers "node: not started".
	if err := sn.Stop(ctx); err != nil && err.Error() != "node: not started" {
		return fmt.Errorf("swarmtest: stop %s: %w", n.Hostname, err)
	}
	return nil
}

// Cluster is an in-process swarmkit cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	opts   Options
	ctx    context.Context // carries the loggers; lives until Stop
	cancel context.CancelFunc

	conn    *grpc.ClientConn // the manager's local control socket
	control api.ControlClient
	watch   api.WatchClient

	workerToken string
	managerAddr string

	mu      sync.Mutex
	nodes   []*Node
	workers int // number of workers ever added, for hostnames
	stopped bool

	closeConn    sync.Once // the control connection, closed by the first Stop
	closeConnErr error
}

// Start starts a manager node, then opts.Workers worker nodes, and returns
// once every node is READY in the manager's view. ctx bounds the start only;
// the nodes run until Stop. On error, every node started so far is stopped.
func Start(ctx context.Context, opts Options) (_ *Cluster, retErr error) {
	if opts.NewBackend == nil {
		return nil, errors.New("swarmtest: Options.NewBackend is required")
	}
	c := &Cluster{opts: opts}
	c.ctx, c.cancel = context.WithCancel(c.loggingContext())
	defer func() {
		if retErr != nil {
			_ = c.Stop(context.Background())
		}
	}()

	m, err := c.startNode(ctx, "manager", true)
	if err != nil {
		return nil, err
	}
	if c.conn, err = controlConn(ctx, filepath.Join(m.stateDir, "control.sock")); err != nil {
		return nil, fmt.Errorf("swarmtest: manager control socket: %w", err)
	}
	c.control = api.NewControlClient(c.conn)
	c.watch = api.NewWatchClient(c.conn)
	c.managerAddr = m.listen
	if c.workerToken, err = c.joinToken(ctx); err != nil {
		return nil, err
	}
	for i := 0; i < opts.Workers; i++ {
		if _, err := c.addWorker(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// loggingContext returns the context every node runs with: it carries one
// logger, for swarmkit's log package and for containerd/log alike.
func (c *Cluster) loggingContext() context.Context {
	logger := logrus.New()
	logger.SetLevel(logrus.InfoLevel)
	out := io.Discard
	if c.opts.Verbose {
		out = c.opts.LogOutput
		if out == nil {
			out = os.Stderr
		}
	}
	logger.SetOutput(out)
	// Background goroutines log through the standard logger.
	logrus.StandardLogger().SetOutput(out)
	entry := logrus.NewEntry(logger)
	ctx := swarmlog.WithLogger(context.Background(), entry)
	return clog.WithLogger(ctx, entry)
}

// startNode creates and starts one node and waits until it is ready.
func (c *Cluster) startNode(ctx context.Context, hostname string, manager bool) (*Node, error) {
	backend, err := c.opts.NewBackend(hostname)
	if err != nil {
		return nil, fmt.Errorf("swarmtest: backend for %s: %w", hostname, err)
	}
	// Keep the state dir short: control.sock lives in it (108-byte limit).
	dir, err := os.MkdirTemp("", "swk-")
	if err != nil {
		return nil, err
	}
	keep, err := os.MkdirTemp("", "swk-keep-")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	exe := executor.New(backend, append([]executor.Option{executor.WithHostname(hostname)}, c.opts.ExecutorOptions...)...)
	n := &Node{
		Hostname: hostname, Manager: manager, Backend: backend, Executor: exe,
		c: c, stateDir: dir, keepDir: keep, listen: "127.0.0.1:0",
	}

	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		os.RemoveAll(dir)
		os.RemoveAll(keep)
		return nil, errors.New("swarmtest: cluster stopped")
	}
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()

	// Stop, which now sees the node, waits for opMu to stop it.
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if err := n.run(ctx, !manager); err != nil {
		return nil, err
	}
	return n, nil
}

// controlConn dials the manager's local control socket the way swarmkit's
// node does (TLS without verification over the unix socket), and waits
// until the control API serves. The Cluster owns the connection and closes
// it in Stop. (node.ListenControlSocket is not used: its goroutine can miss
// the wake-up of its cancelled context, a lost-wakeup race in swarmkit
// v2.0.0's node.go, and then outlives the cluster.)
func controlConn(ctx context.Context, socket string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix:"+socket,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})), //nolint:gosec // loopback control socket, as swarmkit's own node dials it
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32)),
	)
	if err != nil {
		return nil, err
	}
	health := api.NewHealthClient(conn)
	err = poll(ctx, "the control API", func() (bool, string, error) {
		resp, err := health.Check(ctx, &api.HealthCheckRequest{Service: "ControlAPI"})
		if err != nil {
			return false, err.Error(), nil
		}
		return resp.Status == api.HealthCheckResponse_SERVING, resp.Status.String(), nil
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}

// joinToken returns the worker join token of the cluster.
func (c *Cluster) joinToken(ctx context.Context) (string, error) {
	var token string
	err := poll(ctx, "the worker join token", func() (bool, string, error) {
		resp, err := c.control.ListClusters(ctx, &api.ListClustersRequest{})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(resp.Clusters) == 0 {
			return false, "no cluster object yet", nil
		}
		token = resp.Clusters[0].RootCA.JoinTokens.Worker
		return token != "", "empty worker token", nil
	})
	return token, err
}

// AddWorker starts one more worker node, joins it to the cluster and waits
// until the manager sees it READY.
func (c *Cluster) AddWorker(ctx context.Context) (*Node, error) {
	n, err := c.addWorker(ctx)
	if err != nil {
		return nil, err
	}
	return n, c.waitNodesReady(ctx)
}

func (c *Cluster) addWorker(ctx context.Context) (*Node, error) {
	c.mu.Lock()
	c.workers++
	name := fmt.Sprintf("worker-%d", c.workers)
	c.mu.Unlock()
	return c.startNode(ctx, name, false)
}

// waitNodesReady waits until every running node of the cluster is READY in
// the manager's node list.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	return poll(ctx, "every node READY", func() (bool, string, error) {
		resp, err := c.control.ListNodes(ctx, &api.ListNodesRequest{})
		if err != nil {
			return false, err.Error(), nil
		}
		ready := map[string]bool{}
		for _, n := range resp.Nodes {
			ready[n.ID] = n.Status.State == api.NodeStatus_READY
		}
		var missing []string
		for _, n := range c.Nodes() {
			if !n.Running() {
				continue
			}
			if id := n.ID(); id == "" || !ready[id] {
				missing = append(missing, n.Hostname)
			}
		}
		return len(missing) == 0, "not ready: " + strings.Join(missing, ", "), nil
	})
}

// Nodes returns the cluster's nodes, the manager first, then the workers in
// the order they joined.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Manager returns the manager node.
func (c *Cluster) Manager() *Node { return c.Nodes()[0] }

// NodeIDs returns the swarm IDs of the cluster's nodes, in Nodes order.
func (c *Cluster) NodeIDs() []string {
	var ids []string
	for _, n := range c.Nodes() {
		ids = append(ids, n.ID())
	}
	return ids
}

// NodeByID returns the node with the given swarm ID, or nil.
func (c *Cluster) NodeByID(id string) *Node {
	for _, n := range c.Nodes() {
		if n.ID() == id {
			return n
		}
	}
	return nil
}

// Control returns a client of the manager's control API.
func (c *Cluster) Control() api.ControlClient { return c.control }

// PluginServiceSpec returns the spec of a plugin service the way the Docker
// daemon builds it (daemon/cluster/convert/service.go): global mode, and a
// generic runtime of kind "plugin" whose payload is the marshalled spec.
// Updates apply to every node at once (UpdateConfig.Parallelism 0).
func PluginServiceSpec(name string, spec runtime.PluginSpec) *api.ServiceSpec {
	return &api.ServiceSpec{
		Annotations: api.Annotations{Name: name},
		Task:        api.TaskSpec{Runtime: plugintest.Runtime(spec)},
		Mode:        &api.ServiceSpec_Global{Global: &api.GlobalService{}},
		Update:      &api.UpdateConfig{Parallelism: 0},
	}
}

// PluginSpecOf decodes the plugin spec of a plugin task.
func PluginSpecOf(t *api.Task) (runtime.PluginSpec, error) {
	return plugintest.DecodeSpec(t)
}

// CreatePluginService creates a global plugin service named name running
// spec, and returns its ID.
func (c *Cluster) CreatePluginService(ctx context.Context, name string, spec runtime.PluginSpec) (string, error) {
	resp, err := c.control.CreateService(ctx, &api.CreateServiceRequest{Spec: PluginServiceSpec(name, spec)})
	if err != nil {
		return "", fmt.Errorf("swarmtest: create service %s: %w", name, err)
	}
	return resp.Service.ID, nil
}

// UpdateService replaces the plugin spec of the plugin service serviceID.
// It retries while the service's version moves under it.
func (c *Cluster) UpdateService(ctx context.Context, serviceID string, spec runtime.PluginSpec) error {
	rt := plugintest.Runtime(spec)
	return c.UpdateServiceSpec(ctx, serviceID, func(s *api.ServiceSpec) { s.Task.Runtime = rt })
}

// UpdateServiceSpec applies mutate to the current spec of service serviceID
// and submits it. It retries (with a fresh spec) while the service's version
// moves under it, until ctx ends.
func (c *Cluster) UpdateServiceSpec(ctx context.Context, serviceID string, mutate func(*api.ServiceSpec)) error {
	var lastErr error
	err := poll(ctx, "a service update", func() (bool, string, error) {
		get, err := c.control.GetService(ctx, &api.GetServiceRequest{ServiceID: serviceID})
		if err != nil {
			return false, "", fmt.Errorf("swarmtest: get service %s: %w", serviceID, err)
		}
		s := get.Service
		spec := s.Spec.Copy()
		mutate(spec)
		_, err = c.control.UpdateService(ctx, &api.UpdateServiceRequest{
			ServiceID:      serviceID,
			ServiceVersion: &s.Meta.Version,
			Spec:           spec,
		})
		if err != nil && strings.Contains(err.Error(), "update out of sequence") {
			lastErr = err
			return false, err.Error(), nil
		}
		if err != nil {
			return false, "", fmt.Errorf("swarmtest: update service %s: %w", serviceID, err)
		}
		return true, "", nil
	})
	if err != nil && lastErr != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (last: %v)", err, lastErr)
	}
	return err
}

// RemoveService removes the service serviceID.
func (c *Cluster) RemoveService(ctx context.Context, serviceID string) error {
	if _, err := c.control.RemoveService(ctx, &api.RemoveServiceRequest{ServiceID: serviceID}); err != nil {
		return fmt.Errorf("swarmtest: remove service %s: %w", serviceID, err)
	}
	return nil
}

// Tasks returns the tasks of service serviceID, sorted by node hostname,
// then by creation (oldest first).
func (c *Cluster) Tasks(ctx context.Context, serviceID string) ([]*api.Task, error) {
	resp, err := c.control.ListTasks(ctx, &api.ListTasksRequest{
		Filters: &api.ListTasksRequest_Filters{ServiceIDs: []string{serviceID}},
	})
	if err != nil {
		return nil, fmt.Errorf("swarmtest: list tasks of %s: %w", serviceID, err)
	}
	tasks := resp.Tasks
	host := func(t *api.Task) string {
		if n := c.NodeByID(t.NodeID); n != nil {
			return n.Hostname
		}
		return t.NodeID
	}
	sort.SliceStable(tasks, func(i, j int) bool {
		hi, hj := host(tasks[i]), host(tasks[j])
		if hi != hj {
			return hi < hj
		}
		return tasks[i].Meta.CreatedAt.Compare(tasks[j].Meta.CreatedAt) < 0
	})
	return tasks, nil
}

// WatchTasks watches the tasks of service serviceID (every task when
// serviceID is empty) through the manager's watch API. Once it returns, each
// later change (a task created, updated or deleted) sends a value on the
// channel; values are coalesced, so a receiver that lags sees one value for
// several changes and must re-read the tasks. The channel is closed when the
// watch ends: when ctx ends, or when the stream fails (the cluster stopped).
func (c *Cluster) WatchTasks(ctx context.Context, serviceID string) (<-chan struct{}, error) {
	entry := &api.WatchRequest_WatchEntry{
		Kind:   "task",
		Action: api.WatchActionKindCreate | api.WatchActionKindUpdate | api.WatchActionKindRemove,
	}
	if serviceID != "" {
		entry.Filters = []*api.SelectBy{{By: &api.SelectBy_ServiceID{ServiceID: serviceID}}}
	}
	// The stream gets no deadline, only a cancellation once ctx is done:
	// with ctx's deadline, gRPC may end the stream before ctx itself
	// reports it, and a caller could not tell that from a failure.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopAfter := context.AfterFunc(ctx, cancel)
	stream, err := c.watch.Watch(wctx, &api.WatchRequest{Entries: []*api.WatchRequest_WatchEntry{entry}})
	if err == nil {
		// The first message acknowledges the watch: changes from then on
		// are delivered, so a caller that reads the tasks after WatchTasks
		// returns misses none.
		_, err = stream.Recv()
	}
	if err != nil {
		stopAfter()
		cancel()
		return nil, fmt.Errorf("swarmtest: watch tasks: %w", err)
	}
	changed := make(chan struct{}, 1)
	go func() {
		defer stopAfter()
		defer cancel()
		defer close(changed)
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	}()
	return changed, nil
}

// WaitTasks waits until pred holds for the tasks of service serviceID (see
// Tasks), and returns those tasks. It evaluates pred at once and then after
// each change to the service's tasks that WatchTasks reports. When ctx ends
// first, the error describes the last tasks seen.
func (c *Cluster) WaitTasks(ctx context.Context, serviceID string, pred func([]*api.Task) bool) ([]*api.Task, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed, err := c.WatchTasks(wctx, serviceID)
	if err != nil {
		return nil, err
	}
	var tasks []*api.Task
	for {
		tasks, err = c.Tasks(ctx, serviceID)
		if err == nil && pred(tasks) {
			return tasks, nil
		}
		select {
		case _, ok := <-changed:
			if ok {
				continue
			}
			if ctx.Err() == nil {
				return tasks, fmt.Errorf("swarmtest: watch of the tasks of %s ended; tasks:\n%s", serviceID, c.FormatTasks(tasks))
			}
		case <-ctx.Done():
		}
		if err != nil {
			return tasks, fmt.Errorf("swarmtest: waiting for tasks of %s: %w (last error: %v); tasks:\n%s", serviceID, ctx.Err(), err, c.FormatTasks(tasks))
		}
		return tasks, fmt.Errorf("swarmtest: waiting for tasks of %s: %w; tasks:\n%s", serviceID, ctx.Err(), c.FormatTasks(tasks))
	}
}

// RunningOn returns a WaitTasks predicate that holds when each of the nodes
// nodeIDs has a task that is desired RUNNING, is RUNNING, and satisfies match
// (any task if match is nil).
func RunningOn(nodeIDs []string, match func(*api.Task) bool) func([]*api.Task) bool {
	return func(tasks []*api.Task) bool {
		running := map[string]bool{}
		for _, t := range tasks {
			if t.DesiredState == api.TaskStateRunning && t.Status.State == api.TaskStateRunning && (match == nil || match(t)) {
				running[t.NodeID] = true
			}
		}
		for _, id := range nodeIDs {
			if !running[id] {
				return false
			}
		}
		return true
	}
}

// FormatTasks renders tasks one a line, for error messages.
func (c *Cluster) FormatTasks(tasks []*api.Task) string {
	if len(tasks) == 0 {
		return "  (no tasks)"
	}
	var b strings.Builder
	for _, t := range tasks {
		host := t.NodeID
		if n := c.NodeByID(t.NodeID); n != nil {
			host = n.Hostname
		}
		var version uint64
		if t.SpecVersion != nil {
			version = t.SpecVersion.Index
		}
		fmt.Fprintf(&b, "  %-10s task %.10s v%d desired=%s state=%s", host, t.ID, version, t.DesiredState, t.Status.State)
		if t.Status.Err != "" {
			fmt.Fprintf(&b, " err=%q", t.Status.Err)
		}
		b.WriteByte('\n')
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Stop stops every running node, the workers first (in parallel), then the
// manager, and removes every node's state directory and KeepDir. It stops a
// node as Leave does (no plugin.ShuttingDown). ctx bounds each node's
// shutdown. Stop may be called more than once; later calls return the first
// result for each node. Afterwards, no node can be started again.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	c.stopped = true
	nodes := append([]*Node(nil), c.nodes...)
	c.mu.Unlock()

	var (
		wg   sync.WaitGroup
		errs = make([]error, len(nodes))
	)
	for i, n := range nodes {
		if n.Manager {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.close(ctx)
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if n.Manager {
			errs[i] = n.close(ctx)
		}
	}
	if c.cancel != nil {
		c.cancel()
	}
	c.closeConn.Do(func() {
		if c.conn != nil {
			if err := c.conn.Close(); err != nil {
				c.closeConnErr = fmt.Errorf("swarmtest: close control connection: %w", err)
			}
		}
	})
	return errors.Join(append(errs, c.closeConnErr)...)
}

// close stops the node if it runs and removes its directories, once.
func (n *Node) close(ctx context.Context) error {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if n.closed {
		return n.closeErr
	}
	n.closed = true
	if n.Running() {
		n.closeErr = n.stopLocked(ctx)
	}
	for _, dir := range []string{n.stateDir, n.keepDir} {
		if err := os.RemoveAll(dir); err != nil && n.closeErr == nil {
			n.closeErr = err
		}
	}
	return n.closeErr
}

// poll calls cond every few milliseconds until it reports done, returns an
// error, or ctx ends; then the error names what was awaited and cond's last
// explanation.
func poll(ctx context.Context, what string, cond func() (done bool, why string, err error)) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		done, why, err := cond()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("swarmtest: waiting for %s: %w (last: %s)", what, ctx.Err(), why)
		case <-t.C:
		}
	}
}

// Poll calls cond every 20 ms until it returns true or ctx ends; then the
// error names what and cond's last explanation. It is for conditions no
// event reports, such as the state of a node's plugin backend.
func Poll(ctx context.Context, what string, cond func() (done bool, why string)) error {
	return poll(ctx, what, func() (bool, string, error) {
		done, why := cond()
		return done, why, nil
	})
}

// inertNetworks is a network provider for clusters without networking. It is
// swarmkit's InertProvider, except that node attachments (to the ingress
// network every cluster gets) succeed without doing anything: with the plain
// InertProvider, or none, the allocator fails and logs that for every node
// several times a second.
type inertNetworks struct{ networkallocator.InertProvider }

func (inertNetworks) NewAllocator(*networkallocator.Config) (networkallocator.NetworkAllocator, error) {
	return inertAllocator{}, nil
}

type inertAllocator struct{ networkallocator.Inert }

func (inertAllocator) AllocateAttachment(*api.Node, *api.NetworkAttachment) error { return nil }

func (inertAllocator) IsAttachmentAllocated(*api.Node, *api.NetworkAttachment) bool { return true }
