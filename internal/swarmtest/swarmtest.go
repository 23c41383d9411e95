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
	"google.golang.org/grpc/credentials"
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
	"github.com/moby/swarmkit/v2/api"
	swarmlog "github.com/moby/swarmkit/v2/log"
	"github.com/moby/swarmkit/v2/manager/allocator/networkallocator"
	"github.com/moby/swarmkit/v2/node"
	"github.com/seed-e85c93d5/plugin/plugintest"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"

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

	// Verbose sends swarmkit's logs (level info and above) to LogOutput.
	Verbose bool
	// LogOutput receives the logs when Verbose is set; os.Stderr if nil.
	LogOutput io.Writer
}

// Node is one node of a Cluster.
type Node struct {
	// Hostname is the node's name: "manager", "worker-1", "worker-2", ...
	Hostname string
	// Manager tells whether the node was started as the cluster's manager.
	Manager bool
	// Backend is the plugin backend the node's executor runs tasks against.
	Backend plugin.Backend
	// Executor is the node's executor.
	Executor *executor.Executor

	node     *node.Node
	stateDir string
	stopOnce sync.Once
	stopErr  error
}

// ID returns the node's swarm ID.
func (n *Node) ID() string { return n.node.NodeID() }

// SwarmNode returns the underlying swarmkit node.
func (n *Node) SwarmNode() *node.Node { return n.node }

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
	if c.managerAddr, err = m.node.RemoteAPIAddr(); err != nil {
		return nil, fmt.Errorf("swarmtest: manager address: %w", err)
	}
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
	exe := executor.New(backend, append([]executor.Option{executor.WithHostname(hostname)}, c.opts.ExecutorOptions...)...)
	cfg := &node.Config{
		Hostname:        hostname,
		StateDir:        dir,
		ListenRemoteAPI: "127.0.0.1:0",
		Executor:        exe,
		NetworkProvider: inertNetworks{},
	}
	if manager {
		cfg.ListenControlAPI = filepath.Join(dir, "control.sock")
	} else {
		cfg.JoinAddr = c.managerAddr
		cfg.JoinToken = c.workerToken
	}
	sn, err := node.New(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("swarmtest: new node %s: %w", hostname, err)
	}
	n := &Node{Hostname: hostname, Manager: manager, Backend: backend, Executor: exe, node: sn, stateDir: dir}

	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		os.RemoveAll(dir)
		return nil, errors.New("swarmtest: cluster stopped")
	}
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()

	if err := sn.Start(c.ctx); err != nil {
		return nil, fmt.Errorf("swarmtest: start node %s: %w", hostname, err)
	}
	errc := make(chan error, 1)
	errCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errc <- sn.Err(errCtx) }()
	select {
	case <-sn.Ready():
		return n, nil
	case err := <-errc:
		if errCtx.Err() == nil {
			return nil, fmt.Errorf("swarmtest: node %s stopped before it was ready: %v", hostname, err)
		}
		return nil, fmt.Errorf("swarmtest: node %s not ready: %w", hostname, ctx.Err())
	}
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

// waitNodesReady waits until every node of the cluster is READY in the
// manager's node list.
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

// Stop stops every node, the workers first (in parallel), then the manager,
// and removes their state directories. ctx bounds each node's shutdown. Stop
// may be called more than once; later calls return the first result.
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
			errs[i] = n.stop(ctx)
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if n.Manager {
			errs[i] = n.stop(ctx)
		}
	}
	if c.cancel != nil {
		c.cancel()
	}
	if c.conn != nil {
		if err := c.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("swarmtest: close control connection: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (n *Node) stop(ctx context.Context) error {
	n.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		// A node whose Start was never called answers "node: not started".
		if err := n.node.Stop(ctx); err != nil && err.Error() != "node: not started" {
			n.stopErr = fmt.Errorf("swarmtest: stop %s: %w", n.Hostname, err)
		}
		if err := os.RemoveAll(n.stateDir); err != nil && n.stopErr == nil {
			n.stopErr = err
		}
	})
	return n.stopErr
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
