//go:build linux

package dockerd_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// The registry of scenarios (n) and (o): one in-memory content per
// scenario on a loopback port of its own, which can stop and start again
// and throttle its blobs.

// updRefs are the references of (n)'s and (o)'s plugins in a scenario's
// registry: volplugin's version 1, and :big, version "big" with
// paddingSize random bytes in its rootfs.
type updRefs struct{ v1, big string }

// updStore is the content of (n)'s and (o)'s registries: one in-memory
// registry for the whole test binary, published to once, through the first
// scenario that needs it. Each scenario serves it on a loopback port of its
// own (updRegistry), so that no server outlives its scenario; only the
// port in the references changes.
var updStore struct {
	mu        sync.Mutex
	handler   http.Handler
	published bool
}

// updRepo is the repository of (n)'s and (o)'s plugins.
const updRepo = "dockerd-it/upd"

// updRegistry starts the scenario's registry, closed after the scenario,
// and publishes (n)'s and (o)'s plugins to it if no scenario has yet.
func (s *scenarioRun) updRegistry(ctx context.Context) (*updRegistry, updRefs, error) {
	updStore.mu.Lock()
	defer updStore.mu.Unlock()
	if updStore.handler == nil {
		updStore.handler = ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	}
	reg, err := startUpdRegistry(updStore.handler)
	if err != nil {
		return nil, updRefs{}, err
	}
	s.onCleanup(func(context.Context) error { return reg.Close() })
	refs := updRefs{v1: reg.host + "/" + updRepo + ":1", big: reg.host + "/" + updRepo + ":big"}
	if updStore.published {
		return reg, refs, nil
	}
	start := time.Now()
	if err := s.publishUpd(ctx, refs); err != nil {
		return nil, refs, err
	}
	updStore.published = true
	s.notef("published %s and %s (%d MB of random padding) in %.1f s", refs.v1, refs.big, paddingSize>>20, time.Since(start).Seconds())
	return reg, refs, nil
}

// publishUpd creates, pushes and removes (n)'s and (o)'s plugins through
// the scenario's daemon, as publish does.
func (s *scenarioRun) publishUpd(ctx context.Context, refs updRefs) error {
	v1, err := pluginContext(shared.bins.plugin, "1")
	if err != nil {
		return err
	}
	big, err := paddedPluginContext(shared.bins.plugin, "big", paddingSize)
	if err != nil {
		return err
	}
	defs := []struct {
		ref string
		ctx []byte
	}{{refs.v1, v1}, {refs.big, big}}
	for _, d := range defs {
		if err := s.d.Client.PluginCreate(ctx, bytes.NewReader(d.ctx), types.PluginCreateOptions{RepoName: d.ref}); err != nil {
			return fmt.Errorf("plugin create %s: %w", d.ref, err)
		}
	}
	for _, d := range defs {
		if err := push(ctx, s.d.Client, d.ref); err != nil {
			return err
		}
	}
	for _, d := range defs {
		if err := s.d.Client.PluginRemove(ctx, d.ref, types.PluginRemoveOptions{}); err != nil {
			return fmt.Errorf("plugin rm %s: %w", d.ref, err)
		}
	}
	return nil
}

// paddedPluginContext is pluginContext for version tag with a file
// /padding of size pseudo-random bytes in the rootfs, which gzip cannot
// shrink.
func paddedPluginContext(pluginBin, tag string, size int) ([]byte, error) {
	cfg, err := json.Marshal(pluginConfig(tag))
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(pluginBin)
	if err != nil {
		return nil, err
	}
	padding := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{'u', 'p', 'd'}).Read(padding) // never fails
	mtime := time.Unix(1700000000, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		body []byte
	}{
		{"config.json", 0o644, cfg},
		{"rootfs/", 0o755, nil},
		{"rootfs/plugin", 0o755, bin},
		{"rootfs/tag", 0o644, []byte(tag + "\n")},
		{"rootfs/padding", 0o644, padding},
	} {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.body))}
		if f.body == nil {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// updRegistry serves updStore's content on a loopback port, counting the
// requests of pulls as the harness's registry does and the bytes of blobs
// it serves. It can stop (connections refused) and start again on the same
// port, and throttle the blobs it serves to a rate.
type updRegistry struct {
	host  string
	inner http.Handler

	throttle  atomic.Int64 // bytes per second of a blob's body; 0: no limit
	manifests atomic.Int64
	blobs     atomic.Int64
	blobBytes atomic.Int64

	mu     sync.Mutex
	srv    *http.Server  // nil while stopped
	served chan struct{} // closed once srv's Serve has returned
	closed bool
}

func startUpdRegistry(inner http.Handler) (*updRegistry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("registry listen: %w", err)
	}
	r := &updRegistry{host: l.Addr().String(), inner: inner}
	r.serve(l)
	return r, nil
}

// serve serves on l; r.mu must be held, or r not yet shared.
func (r *updRegistry) serve(l net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(r.serveHTTP)}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l) // ErrServerClosed after Close
	}()
	r.srv, r.served = srv, served
}

func (r *updRegistry) serveHTTP(w http.ResponseWriter, req *http.Request) {
	path := req.URL.Path
	switch {
	case !strings.HasPrefix(path, "/v2/"):
	case strings.Contains(path, "/manifests/") && (req.Method == http.MethodGet || req.Method == http.MethodHead):
		r.manifests.Add(1)
	case req.Method == http.MethodGet && strings.Contains(path, "/blobs/") && !strings.Contains(path, "/blobs/uploads"):
		r.blobs.Add(1)
		w = &blobWriter{ResponseWriter: w, ctx: req.Context(), r: r, start: time.Now()}
	}
	r.inner.ServeHTTP(w, req)
}

// blobWriter counts the bytes of a blob's body and, while its registry
// throttles, writes them no faster than the rate.
type blobWriter struct {
	http.ResponseWriter
	ctx   context.Context
	r     *updRegistry
	start time.Time
	n     int64
}

func (w *blobWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		if rate := w.r.throttle.Load(); rate > 0 {
			due := w.start.Add(time.Duration(float64(w.n) / float64(rate) * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-w.ctx.Done():
					t.Stop()
					return written, w.ctx.Err()
				case <-t.C:
				}
			}
		}
		chunk := b[:min(len(b), 32<<10)]
		n, err := w.ResponseWriter.Write(chunk)
		w.n += int64(n)
		w.r.blobBytes.Add(int64(n))
		written += n
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

func (r *updRegistry) pulls() pulls {
	return pulls{manifests: r.manifests.Load(), blobs: r.blobs.Load()}
}

// Stop closes the listener and every connection, so that connections are
// refused; a request being served ends with its connection. Stopping a stopped
// registry does nothing.
func (r *updRegistry) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopLocked()
}

func (r *updRegistry) stopLocked() error {
	if r.srv == nil {
		return nil
	}
	err := r.srv.Close()
	<-r.served
	r.srv, r.served = nil, nil
	return err
}

// Restart listens on the same port again after Stop.
func (r *updRegistry) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return errors.New("registry closed")
	case r.srv != nil:
		return errors.New("registry already running")
	}
	l, err := net.Listen("tcp", r.host)
	if err != nil {
		return fmt.Errorf("registry listen again on %s: %w", r.host, err)
	}
	r.serve(l)
	return nil
}

// Close stops the registry for good; it may be called more than once.
func (r *updRegistry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return r.stopLocked()
}
