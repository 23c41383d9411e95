//go:build linux

package realmanager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/plugin"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// executor is a plugin.Executor whose "processes" are HTTP servers on the
// plugins' unix sockets.
type executor struct {
	root string          // the Manager's ExecRoot
	pm   *plugin.Manager // set by CreateExecutor, before any call

	mu         sync.Mutex
	running    map[string]*fakePlugin // by full plugin ID
	behaviours map[string]Behaviour   // by full plugin ID; none: the zero Behaviour
	stats      map[string]*ProcessStats

	exits sync.WaitGroup // HandleExitEvent goroutines started by Signal
}

type fakePlugin struct {
	srv            *http.Server
	served         chan struct{} // closed when Serve has returned
	stdout, stderr io.WriteCloser
	stats          *ProcessStats // the plugin's, guarded by the executor's mu
	statsMu        *sync.Mutex   // the executor's mu

	behaviour Behaviour
	started   time.Time

	mu          sync.Mutex
	hung        bool
	changed     chan struct{}  // closed and replaced when hung changes
	stopped     chan struct{}  // closed when the process stops
	closed      bool           // set when stopped is closed
	handlers    sync.WaitGroup // requests in progress; Add only while !closed
	activations int            // Plugin.Activate requests answered or refused
}

func newExecutor(root string) *executor {
	return &executor{
		root:       root,
		running:    make(map[string]*fakePlugin),
		behaviours: make(map[string]Behaviour),
		stats:      make(map[string]*ProcessStats),
	}
}

// Behaviour is how the fake "process" of a plugin answers its socket, from
// each start of the process on (see [Manager.SetBehaviour]). The zero
// Behaviour, every plugin's unless set, answers every request at once.
// Whatever it says, the socket listens from the start, as a real plugin's
// does once it has bound it, so the Manager's own readiness check (a dial)
// passes.
type Behaviour struct {
	// FailActivations makes the first FailActivations requests for POST
	// /Plugin.Activate of each process answer 503 Service Unavailable with
	// a plugin-protocol error body ({"Err": "... still starting ..."}), as
	// a plugin that serves its socket before it is ready.
	FailActivations int
	// BusyFor holds every request that arrives within BusyFor of the
	// process's start, unanswered, until BusyFor has passed since the
	// start, as a plugin busy initialising: a client that gives up sooner
	// gets no answer.
	BusyFor time.Duration
	// Hung makes each process hung from its start: every request is held
	// unanswered until the client gives up, [Manager.Unhang] is called or
	// the process stops (see [Manager.Hang]).
	Hung bool
}

// ProcessStats counts what the fake processes of one plugin did, over
// every process the plugin has had with this Manager (Restart included).
type ProcessStats struct {
	// Starts counts the processes started: each Enable, and each restart
	// of a plugin the Manager saw exit (SimulateExit).
	Starts int
	// Stops counts the processes stopped: by the Manager (Disable, a forced
	// Remove, Shutdown) or by SimulateExit.
	Stops int
	// Requests counts the requests received, for any endpoint, answered
	// or not.
	Requests int
	// Activations counts the requests for POST /Plugin.Activate answered
	// 200 with the plugin's interfaces.
	Activations int
	// Refused counts those answered 503 because of FailActivations.
	Refused int
	// Held counts the requests a busy or hung process held (from the
	// moment it began to hold them); Dropped those of them it never
	// answered (the client gave up or the process stopped), counted once
	// the server notices, which may be a little after the client gave up.
	Held, Dropped int
}

var _ plugin.Executor = (*executor)(nil)

// Create starts serving the plugin's socket. The Manager calls it without
// holding its store lock, so looking the plugin up is safe.
func (e *executor) Create(id string, _ specs.Spec, stdout, stderr io.WriteCloser) error {
	p, err := e.pm.Get(id)
	if err != nil {
		closeStreams(stdout, stderr)
		return err
	}
	if p.GetSocket() == "" {
		closeStreams(stdout, stderr)
		return errNoSocket
	}
	sock := filepath.Join(e.root, id, p.GetSocket())
	implements := implementsOf(p.GetTypes())

	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.running[id]; ok {
		closeStreams(stdout, stderr)
		return fmt.Errorf("realmanager: plugin %s is already running", id)
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		closeStreams(stdout, stderr)
		return err
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		closeStreams(stdout, stderr)
		return fmt.Errorf("realmanager: plugin socket: %w", err)
	}
	st := e.stats[id]
	if st == nil {
		st = &ProcessStats{}
		e.stats[id] = st
	}
	st.Starts++
	b := e.behaviours[id]
	fp := &fakePlugin{
		served:    make(chan struct{}),
		stdout:    stdout,
		stderr:    stderr,
		stats:     st,
		statsMu:   &e.mu,
		behaviour: b,
		started:   time.Now(),
		hung:      b.Hung,
		changed:   make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	fp.srv = &http.Server{Handler: fp.handler(pluginHandler(implements))}
	go func() {
		defer close(fp.served)
		_ = fp.srv.Serve(l)
	}()
	e.running[id] = fp
	return nil
}

// handler serves inner as the process's Behaviour and state say, and
// counts the answers.
func (fp *fakePlugin) handler(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fp.mu.Lock()
		if fp.closed {
			fp.mu.Unlock()
			return // the process is stopping: no answer
		}
		fp.handlers.Add(1)
		fp.mu.Unlock()
		defer fp.handlers.Done()
		fp.count(func(st *ProcessStats) { st.Requests++ })

		// Read the body first: the server notices that the client has
		// gone (the request's context ends) only once the body is read.
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if !fp.hold(r) {
			return
		}
		activate := r.Method == http.MethodPost && r.URL.Path == "/Plugin.Activate"
		if activate {
			fp.mu.Lock()
			n := fp.activations
			fp.activations++
			fp.mu.Unlock()
			if n < fp.behaviour.FailActivations {
				fp.count(func(st *ProcessStats) { st.Refused++ })
				w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_ = json.NewEncoder(w).Encode(map[string]string{"Err": fmt.Sprintf("realmanager: fake plugin still starting (activation %d of %d refused)", n+1, fp.behaviour.FailActivations)})
				return
			}
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		inner.ServeHTTP(rec, r)
		if activate && rec.status == http.StatusOK {
			fp.count(func(st *ProcessStats) { st.Activations++ })
		}
	})
}

// hold holds r while the process is busy starting or hung, and reports
// whether it is to be answered: false once the client has given up or the
// process stops.
func (fp *fakePlugin) hold(r *http.Request) bool {
	held := false
	for {
		fp.mu.Lock()
		hung, changed := fp.hung, fp.changed
		fp.mu.Unlock()
		busy := time.Until(fp.started.Add(fp.behaviour.BusyFor))
		if !hung && busy <= 0 {
			return true
		}
		if !held {
			held = true
			fp.count(func(st *ProcessStats) { st.Held++ })
		}
		if !fp.wait(r, hung, busy, changed) {
			fp.count(func(st *ProcessStats) { st.Dropped++ })
			return false
		}
	}
}

// wait waits until the process is no longer busy (after busy, unless it is
// hung) or hangs or ends its hang (changed), and reports false if the
// client gave up or the process stopped first.
func (fp *fakePlugin) wait(r *http.Request, hung bool, busy time.Duration, changed <-chan struct{}) bool {
	var ready <-chan time.Time
	if !hung {
		t := time.NewTimer(busy)
		defer t.Stop()
		ready = t.C
	}
	select {
	case <-ready:
		return true
	case <-changed:
		return true
	case <-fp.stopped:
		return false
	case <-r.Context().Done():
		return false
	}
}

func (fp *fakePlugin) count(fn func(*ProcessStats)) {
	fp.statsMu.Lock()
	defer fp.statsMu.Unlock()
	fn(fp.stats)
}

// setHung hangs the process or ends its hang.
func (fp *fakePlugin) setHung(hung bool) {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.hung != hung {
		fp.hung = hung
		close(fp.changed)
		fp.changed = make(chan struct{})
	}
}

// statusRecorder remembers the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// setBehaviour sets how the plugin with the given full ID answers from its
// next start on.
func (e *executor) setBehaviour(id string, b Behaviour) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.behaviours[id] = b
}

// hang hangs the running process of the plugin, or ends its hang.
func (e *executor) hang(id string, hung bool) error {
	e.mu.Lock()
	fp, ok := e.running[id]
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("realmanager: plugin %s is not running", id)
	}
	fp.setHung(hung)
	return nil
}

// processStats returns a copy of the plugin's counts.
func (e *executor) processStats(id string) ProcessStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	if st := e.stats[id]; st != nil {
		return *st
	}
	return ProcessStats{}
}

func (e *executor) IsRunning(id string) (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.running[id]
	return ok, nil
}

// Restore never finds a live plugin: nothing outlives a Manager.
func (e *executor) Restore(id string, stdout, stderr io.WriteCloser) (bool, error) {
	closeStreams(stdout, stderr)
	return false, nil
}

// Signal stops the plugin whatever the signal, and reports its exit to the
// Manager from another goroutine, as containerd's event loop does: the
// Manager waits for that report while it disables the plugin.
func (e *executor) Signal(id string, _ syscall.Signal) error {
	if err := e.stop(id); err != nil {
		return err
	}
	e.exits.Add(1)
	go func() {
		defer e.exits.Done()
		if err := e.pm.HandleExitEvent(id); err != nil {
			log.G(context.TODO()).WithError(err).WithField("plugin", id).Warn("realmanager: handling plugin exit")
		}
	}()
	return nil
}

// stop closes the plugin's listener and streams and waits for its server to
// stop.
func (e *executor) stop(id string) error {
	e.mu.Lock()
	fp, ok := e.running[id]
	delete(e.running, id)
	if ok {
		fp.stats.Stops++
	}
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("realmanager: plugin %s is not running", id)
	}
	fp.close()
	return nil
}

// close stops the process: the requests it holds end unanswered, its
// server and connections close, and it returns once every handler has.
func (fp *fakePlugin) close() {
	fp.mu.Lock()
	fp.closed = true
	close(fp.stopped)
	fp.mu.Unlock()
	_ = fp.srv.Close()
	<-fp.served
	fp.handlers.Wait()
	// The Manager feeds the streams to logrus writers, each with a goroutine
	// that ends when the stream is closed.
	closeStreams(fp.stdout, fp.stderr)
}

// wait waits for the exit reports started by Signal.
func (e *executor) wait() { e.exits.Wait() }

// closeAll stops whatever is still running (nothing after a Shutdown, unless
// a plugin was mid-restart).
func (e *executor) closeAll() error {
	e.mu.Lock()
	left := e.running
	e.running = make(map[string]*fakePlugin)
	for _, fp := range left {
		fp.stats.Stops++
	}
	e.mu.Unlock()
	for _, fp := range left {
		fp.close()
	}
	if len(left) > 0 {
		return fmt.Errorf("%d plugin(s) were still running after Shutdown", len(left))
	}
	return nil
}

func closeStreams(ws ...io.WriteCloser) {
	for _, w := range ws {
		if w != nil {
			_ = w.Close()
		}
	}
}

// implementsOf maps interface types such as docker.volumedriver/1.0 to the
// names a plugin announces in its activation response ("VolumeDriver").
func implementsOf(typs []types.PluginInterfaceType) []string {
	known := map[string]string{
		"volumedriver":     "VolumeDriver",
		"networkdriver":    "NetworkDriver",
		"ipamdriver":       "IpamDriver",
		"authz":            "authz",
		"logdriver":        "LogDriver",
		"metricscollector": "MetricsCollector",
		"graphdriver":      "GraphDriver",
	}
	out := make([]string, 0, len(typs))
	for _, t := range typs {
		if n, ok := known[t.Capability]; ok {
			out = append(out, n)
		} else {
			out = append(out, t.Capability)
		}
	}
	return out
}

// ActivateResponse is the body of a fake plugin's answer to
// POST /Plugin.Activate.
type ActivateResponse struct {
	Implements []string
}

// Activate calls POST /Plugin.Activate on the plugin socket sock, as the
// daemon's plugin client does when it first uses a plugin, and returns the
// answer: the fake plugins of this package implement "VolumeDriver".
func Activate(ctx context.Context, sock string) (ActivateResponse, error) {
	var ar ActivateResponse
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/Plugin.Activate", nil)
	if err != nil {
		return ar, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return ar, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ar, fmt.Errorf("realmanager: /Plugin.Activate on %s: %s", sock, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil {
		return ar, fmt.Errorf("realmanager: /Plugin.Activate on %s: %w", sock, err)
	}
	return ar, nil
}

// pluginHandler answers POST /Plugin.Activate and refuses everything else
// with 404 and a plugin-protocol error body.
func pluginHandler(implements []string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
		_ = json.NewEncoder(w).Encode(ActivateResponse{Implements: implements})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]string{"Err": "realmanager: fake plugin does not implement " + r.URL.Path})
	})
	return mux
}

var errNoSocket = errors.New("realmanager: plugin has no socket")

// SetBehaviour sets how the plugin called nameOrID (a name, an ID or a
// unique ID prefix) answers its socket from its next process start on: a
// process already running keeps the Behaviour it started with. Set it
// after the pull (the plugin has its ID) and before the Enable. The zero
// Behaviour, every plugin's unless set, answers at once.
func (m *Manager) SetBehaviour(nameOrID string, b Behaviour) error {
	p, err := m.Manager.Get(nameOrID)
	if err != nil {
		return err
	}
	m.exec.setBehaviour(p.GetID(), b)
	return nil
}

// Hang makes the running process of the plugin with the given full ID
// stop answering, as a plugin stuck in a deadlock: its socket still
// accepts connections, but every request, in progress or new, is held
// unanswered until the client gives up, [Manager.Unhang] is called or the
// process stops. The hang belongs to the process: a new process (the
// Manager's next start of the plugin, after a disable and enable or an
// exit) answers as its Behaviour says.
func (m *Manager) Hang(id string) error { return m.exec.hang(id, true) }

// Unhang makes the running process of the plugin with the given full ID,
// hung by [Manager.Hang] or [Behaviour].Hung, answer again, the requests it
// holds included.
func (m *Manager) Unhang(id string) error { return m.exec.hang(id, false) }

// Process returns what the fake processes of the plugin with the given
// full ID did so far: starts, stops and answers (see [ProcessStats]).
func (m *Manager) Process(id string) ProcessStats { return m.exec.processStats(id) }
