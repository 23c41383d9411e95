//go:build linux

package realmanager

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// Registry is an in-process OCI distribution registry listening with plain
// HTTP on a loopback port of 127.0.0.1. moby's registry service treats
// 127.0.0.0/8 as insecure, so a Manager pulls from and pushes to it over
// HTTP without any configuration.
//
// Its content lives in memory for the life of the Registry: it survives
// [Registry.Stop] and [Registry.Restart] and is dropped by
// [Registry.Close]. A Registry is safe for concurrent use.
type Registry struct {
	handler  http.Handler
	addr     string // "127.0.0.1:PORT", fixed for the life of the Registry
	blobGets atomic.Int64

	mu     sync.Mutex
	srv    *http.Server  // nil while stopped
	served chan struct{} // closed when srv's Serve has returned
	closed bool
}

// StartRegistry starts a registry on a free port of 127.0.0.1. The caller
// must call [Registry.Close].
func StartRegistry() (*Registry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("realmanager: registry listen: %w", err)
	}
	r := &Registry{addr: l.Addr().String()}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && isBlobGet(req.URL.Path) {
			r.blobGets.Add(1)
		}
		inner.ServeHTTP(w, req)
	})
	r.serve(l)
	return r, nil
}

// isBlobGet reports whether path is /v2/<name>/blobs/<digest> (and not an
// upload session under /blobs/uploads/).
func isBlobGet(path string) bool {
	i := strings.LastIndex(path, "/blobs/")
	return strings.HasPrefix(path, "/v2/") && i >= 0 && !strings.HasPrefix(path[i+len("/blobs/"):], "uploads")
}

// serve starts serving on l; r.mu must be held or r not yet shared.
func (r *Registry) serve(l net.Listener) {
	srv := &http.Server{Handler: r.handler}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l) // always returns an error; ErrServerClosed after Stop
	}()
	r.srv, r.served = srv, served
}

// Host returns the registry's address, "127.0.0.1:PORT", which is the
// domain part of the references of the plugins published to it. It does not
// change across Stop and Restart.
func (r *Registry) Host() string { return r.addr }

// BlobGets returns how many GET requests for blobs the registry has received
// since it started, failed ones included. A rising count proves that a pull
// really downloaded content from this registry.
func (r *Registry) BlobGets() int64 { return r.blobGets.Load() }

// Stop stops listening and closes every open connection, so that new
// connections to Host are refused, but keeps the content. It returns once
// the server has stopped accepting. Stopping a stopped registry is a no-op.
func (r *Registry) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopLocked()
}

func (r *Registry) stopLocked() error {
	if r.srv == nil {
		return nil
	}
	err := r.srv.Close()
	<-r.served
	r.srv, r.served = nil, nil
	return err
}

// Restart listens again on the same address with the same content after
// [Registry.Stop]. It fails if the registry is running or closed, or if the
// port has been taken by someone else in the meantime.
func (r *Registry) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return errors.New("realmanager: registry is closed")
	case r.srv != nil:
		return errors.New("realmanager: registry is already running")
	}
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		return fmt.Errorf("realmanager: registry listen again on %s: %w", r.addr, err)
	}
	r.serve(l)
	return nil
}

// Close stops the registry for good; it may be called more than once.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return r.stopLocked()
}
