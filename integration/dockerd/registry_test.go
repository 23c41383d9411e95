//go:build linux

package dockerd_test

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// registry is the registry the plugins are published to and pulled from:
// go-containerregistry's in-memory registry (the one internal/realmanager
// serves), on plain HTTP on a loopback port (moby treats 127.0.0.0/8 as
// insecure), behind a handler that counts the requests a pull makes, so
// that a scenario can tell whether a daemon pulled.
type registry struct {
	host   string // "127.0.0.1:PORT"
	srv    *http.Server
	served chan struct{} // closed once Serve has returned

	manifests atomic.Int64 // GET and HEAD of /v2/<name>/manifests/<ref>
	blobs     atomic.Int64 // GET of /v2/<name>/blobs/<digest>
}

// pulls is what a registry has counted of pulls so far.
type pulls struct{ manifests, blobs int64 }

func (p pulls) String() string {
	return fmt.Sprintf("%d manifest and %d blob requests", p.manifests, p.blobs)
}

// startRegistry starts a registry on a free port of 127.0.0.1. The caller
// must call Close.
func startRegistry() (*registry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("registry listen: %w", err)
	}
	r := &registry{host: l.Addr().String(), served: make(chan struct{})}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.count(req)
		inner.ServeHTTP(w, req)
	})}
	go func() {
		defer close(r.served)
		_ = r.srv.Serve(l) // ErrServerClosed after Close
	}()
	return r, nil
}

// count counts req if a pull makes it: a manifest resolved (HEAD) or
// fetched (GET), a blob fetched. A push's blob checks are HEADs and its
// uploads are under /blobs/uploads/, so they do not count; the HEAD of a
// manifest a push may make does, which does not matter: the scenarios
// compare counts over spans without a push.
func (r *registry) count(req *http.Request) {
	path := req.URL.Path
	if !strings.HasPrefix(path, "/v2/") {
		return
	}
	switch {
	case strings.Contains(path, "/manifests/") && (req.Method == http.MethodGet || req.Method == http.MethodHead):
		r.manifests.Add(1)
	case req.Method == http.MethodGet && strings.Contains(path, "/blobs/") && !strings.Contains(path, "/blobs/uploads"):
		r.blobs.Add(1)
	}
}

// Host is the registry's address, the domain of the plugins' references.
func (r *registry) Host() string { return r.host }

// pulls returns the counts so far.
func (r *registry) pulls() pulls {
	return pulls{manifests: r.manifests.Load(), blobs: r.blobs.Load()}
}

// Close stops the registry, closing every connection, and waits for its
// server goroutine.
func (r *registry) Close() error {
	err := r.srv.Close()
	<-r.served
	return err
}
