package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/docker/api/types"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var volumeDriver = []types.PluginInterfaceType{{Prefix: "docker", Capability: "volumedriver", Version: "1.0"}}

// listen serves h on a unix socket of the test's own, until the test ends.
func listen(t *testing.T) (*net.UnixAddr, net.Listener) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hp") // short: sun_path is 108 bytes
	assert.NilError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := &net.UnixAddr{Net: "unix", Name: filepath.Join(dir, "p.sock")}
	l, err := net.ListenUnix("unix", addr)
	assert.NilError(t, err)
	return addr, l
}

func serveHTTP(t *testing.T, h http.Handler) *net.UnixAddr {
	t.Helper()
	addr, l := listen(t)
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return addr
}

func TestProbeHTTP(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	mux := http.NewServeMux()
	mux.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, r *http.Request) {
		assert.Check(t, is.Equal(r.Header.Get("Accept"), mimetype))
		w.Write([]byte(`{"Implements":["VolumeDriver"]}`))
	})
	good := serveHTTP(t, mux) // VolumeDriver.Capabilities is a 404: still an answer
	assert.NilError(t, Probe(context.Background(), good, volumeDriver))

	bad := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "broken", 500) }))
	err := Probe(context.Background(), bad, volumeDriver)
	assert.Check(t, is.ErrorContains(err, "Plugin.Activate: answered 500 Internal Server Error: broken"))

	hung := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = Probe(ctx, hung, volumeDriver)
	assert.Check(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	assert.Check(t, is.ErrorContains(err, "Plugin.Activate: "))

	gone := &net.UnixAddr{Net: "unix", Name: filepath.Join(t.TempDir(), "none.sock")}
	assert.Check(t, is.ErrorContains(Probe(context.Background(), gone, volumeDriver), "Plugin.Activate: "))
	assert.Check(t, is.ErrorIs(Probe(context.Background(), nil, volumeDriver), ErrNoAddress))
}

type identity struct {
	csi.UnimplementedIdentityServer
	ready bool
}

func (i *identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(i.ready)}, nil
}

func TestProbeCSI(t *testing.T) {
	csiNode := []types.PluginInterfaceType{{Prefix: "docker", Capability: "csinode", Version: "1.0"}}
	id := &identity{}
	addr, l := listen(t)
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, id)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); <-done })

	assert.Check(t, is.ErrorContains(Probe(context.Background(), addr, csiNode), "csi.Identity/Probe: not ready"))
	id.ready = true
	assert.NilError(t, Probe(context.Background(), addr, csiNode))
}

func TestName(t *testing.T) {
	assert.Check(t, is.Equal(Name(volumeDriver), "Plugin.Activate, VolumeDriver.Capabilities"))
	assert.Check(t, is.Equal(Name(nil), "Plugin.Activate"))
	assert.Check(t, is.Equal(Name([]types.PluginInterfaceType{{Prefix: "docker", Capability: "csicontroller", Version: "1.0"}}), "csi.Identity/Probe"))
	assert.Check(t, strings.Contains(Name([]types.PluginInterfaceType{{Prefix: "docker", Capability: "networkdriver", Version: "1.0"}}), "NetworkDriver.GetCapabilities"))
}
