//go:build linux

package realmanager

import (
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

	mu      sync.Mutex
	running map[string]*fakePlugin // by full plugin ID

	exits sync.WaitGroup // HandleExitEvent goroutines started by Signal
}

type fakePlugin struct {
	srv            *http.Server
	served         chan struct{} // closed when Serve has returned
	stdout, stderr io.WriteCloser
}

func newExecutor(root string) *executor {
	return &executor{root: root, running: make(map[string]*fakePlugin)}
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
	fp := &fakePlugin{
		srv:    &http.Server{Handler: pluginHandler(implements)},
		served: make(chan struct{}),
		stdout: stdout,
		stderr: stderr,
	}
	go func() {
		defer close(fp.served)
		_ = fp.srv.Serve(l)
	}()
	e.running[id] = fp
	return nil
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
	e.mu.Unlock()
	if !ok {
		return fmt.Errorf("realmanager: plugin %s is not running", id)
	}
	fp.close()
	return nil
}

func (fp *fakePlugin) close() {
	_ = fp.srv.Close()
	<-fp.served
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
