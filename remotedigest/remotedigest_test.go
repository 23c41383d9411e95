package remotedigest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const manifest = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.plugin.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}`

// privateRegistry serves one manifest at /v2/acme/vol/manifests/1 to
// requests with basic credentials user:secret, and a basic challenge to
// the others, on a loopback port, until the test ends.
func privateRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "secret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/v2/acme/vol/manifests/1" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
		w.Header().Set("Docker-Content-Digest", digest.FromString(manifest).String())
		w.Header().Set("Content-Length", "0")
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Length", "")
			_, _ = w.Write([]byte(manifest))
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		http.DefaultClient.CloseIdleConnections()
	})
	return strings.TrimPrefix(srv.URL, "http://")
}

// The pull's credentials answer the registry's challenge, with the
// default hosts and with hosts a daemon configured without an authorizer
// of theirs (WithRegistryHosts); wrong ones fail, and the password is in
// no error.
func TestResolveUsesThePullsCredentials(t *testing.T) {
	host := privateRegistry(t)
	ref, err := reference.ParseNormalizedNamed(host + "/acme/vol:1")
	assert.NilError(t, err)
	want := digest.FromString(manifest)
	daemonHosts := docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts))
	for _, tc := range []struct {
		name  string
		hosts docker.RegistryHosts
	}{{"default hosts", nil}, {"the daemon's hosts", daemonHosts}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(context.Background(), ref, &registry.AuthConfig{Username: "user", Password: "secret"}, tc.hosts)
			assert.NilError(t, err)
			assert.Check(t, is.Equal(got, want))

			_, err = Resolve(context.Background(), ref, &registry.AuthConfig{Username: "user", Password: "wrong-password"}, tc.hosts)
			assert.Check(t, err != nil)
			assert.Check(t, !strings.Contains(err.Error(), "wrong-password"), "%v", err)

			_, err = Resolve(context.Background(), ref, nil, tc.hosts)
			assert.Check(t, err != nil, "anonymous access to a private registry")
		})
	}
}

type resolverBackend struct{ d digest.Digest }

func (r resolverBackend) ResolveManifest(context.Context, reference.Named, *registry.AuthConfig) (digest.Digest, error) {
	return r.d, nil
}

// For: a Backend's own ResolveManifest first, nothing for a Backend that
// can neither resolve nor is moby's Manager.
func TestFor(t *testing.T) {
	want := digest.FromString("m")
	resolve := For(resolverBackend{want}, nil)
	assert.Assert(t, resolve != nil)
	got, err := resolve(context.Background(), nil, nil)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(got, want))
	assert.Check(t, For(struct{}{}, nil) == nil)
	assert.Check(t, For(nil, nil) == nil)
}
