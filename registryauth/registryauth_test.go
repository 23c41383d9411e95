package registryauth

import (
	"context"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func mustRef(t *testing.T, s string) reference.Named {
	t.Helper()
	ref, err := reference.ParseNormalizedNamed(s)
	assert.NilError(t, err)
	return ref
}

func TestNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io":                           "docker.io",
		"index.docker.io":                     "docker.io",
		"registry-1.docker.io":                "docker.io",
		"https://index.docker.io/v1/":         "docker.io",
		"http://index.docker.io":              "docker.io",
		"Docker.IO":                           "docker.io",
		"myreg.example.com":                   "myreg.example.com",
		"MyReg.Example.com":                   "myreg.example.com",
		"myreg.example.com:5000":              "myreg.example.com:5000",
		"https://myreg.example.com:5000/v1/":  "myreg.example.com:5000",
		"http://myreg.example.com":            "myreg.example.com",
		"myreg.example.com/some/path":         "myreg.example.com",
		"https://user@myreg.example.com/v2/":  "myreg.example.com",
		" myreg.example.com ":                 "myreg.example.com",
		"[::1]:5000":                          "[::1]:5000",
		"localhost:5000":                      "localhost:5000",
		"docker.io:443":                       "docker.io:443",
		"":                                    "",
		"https://":                            "",
		"registry-1.docker.io.example.com/x/": "registry-1.docker.io.example.com",
	} {
		assert.Check(t, is.Equal(normalizeHost(in), want), "input %q", in)
	}
}

func TestStaticDockerHubAliases(t *testing.T) {
	ctx := context.Background()
	for _, host := range []string{"docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io", "DOCKER.IO"} {
		auth := Static(host, registry.AuthConfig{Username: "hubuser", Password: "hubpass"})
		for _, name := range []string{"alpine", "docker.io/library/alpine", "index.docker.io/library/alpine:3", "vieux/sshfs:latest"} {
			cfg, err := auth(ctx, mustRef(t, name))
			assert.NilError(t, err)
			assert.Check(t, is.DeepEqual(cfg, &registry.AuthConfig{
				Username: "hubuser", Password: "hubpass", ServerAddress: "https://index.docker.io/v1/",
			}), "host %q, ref %q", host, name)
		}
		cfg, err := auth(ctx, mustRef(t, "myreg.example.com/vieux/sshfs"))
		assert.NilError(t, err)
		assert.Check(t, is.Nil(cfg), "host %q", host)
	}
}

func TestStaticOtherRegistries(t *testing.T) {
	ctx := context.Background()
	creds := registry.AuthConfig{Username: "u", Password: "p"}
	tests := []struct {
		host     string
		ref      string
		wantAddr string // "" = anonymous
	}{
		{host: "myreg.example.com", ref: "myreg.example.com/team/plugin:1", wantAddr: "myreg.example.com"},
		{host: "https://myreg.example.com/v2/", ref: "myreg.example.com/team/plugin", wantAddr: "myreg.example.com"},
		{host: "http://MyReg.example.com", ref: "myreg.example.com/team/plugin", wantAddr: "myreg.example.com"},
		{host: "myreg.example.com:5000", ref: "myreg.example.com:5000/plugin", wantAddr: "myreg.example.com:5000"},
		{host: "https://myreg.example.com:5000/v1/", ref: "myreg.example.com:5000/plugin", wantAddr: "myreg.example.com:5000"},
		{host: "localhost:5000", ref: "localhost:5000/plugin", wantAddr: "localhost:5000"},
		// The port is significant.
		{host: "myreg.example.com:5000", ref: "myreg.example.com/plugin"},
		{host: "myreg.example.com", ref: "myreg.example.com:5000/plugin"},
		// Only the exact host, not sub- or parent domains.
		{host: "example.com", ref: "myreg.example.com/plugin"},
		{host: "myreg.example.com", ref: "sub.myreg.example.com/plugin"},
		// Docker Hub is not a wildcard.
		{host: "myreg.example.com", ref: "alpine"},
	}
	for _, tc := range tests {
		cfg, err := Static(tc.host, creds)(ctx, mustRef(t, tc.ref))
		assert.NilError(t, err)
		if tc.wantAddr == "" {
			assert.Check(t, is.Nil(cfg), "host %q ref %q", tc.host, tc.ref)
			continue
		}
		assert.Check(t, is.DeepEqual(cfg, &registry.AuthConfig{Username: "u", Password: "p", ServerAddress: tc.wantAddr}),
			"host %q ref %q", tc.host, tc.ref)
	}
}

func TestStaticKeepsServerAddressAndReturnsCopies(t *testing.T) {
	ctx := context.Background()
	auth := Static("myreg.example.com", registry.AuthConfig{IdentityToken: "tok", ServerAddress: "https://myreg.example.com/custom"})
	ref := mustRef(t, "myreg.example.com/plugin")

	cfg, err := auth(ctx, ref)
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(cfg, &registry.AuthConfig{IdentityToken: "tok", ServerAddress: "https://myreg.example.com/custom"}))

	cfg.IdentityToken = "modified by caller"
	again, err := auth(ctx, ref)
	assert.NilError(t, err)
	assert.Check(t, is.Equal(again.IdentityToken, "tok"))
}

func TestStaticInvalid(t *testing.T) {
	ctx := context.Background()
	for _, host := range []string{"", "  ", "https://"} {
		_, err := Static(host, registry.AuthConfig{Password: "pw"})(ctx, mustRef(t, "alpine"))
		assert.Check(t, cerrdefs.IsInvalidArgument(err), "host %q: %v", host, err)
	}
	_, err := Static("docker.io", registry.AuthConfig{})(ctx, nil)
	assert.Check(t, cerrdefs.IsInvalidArgument(err), "%v", err)
}

func TestFromEncoded(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		serverAddress string
		mine, others  []string // references that get the credentials, and that do not
	}{
		{
			serverAddress: "myreg.example.com",
			mine:          []string{"myreg.example.com/plugin", "MyReg.Example.com/team/plugin:1"},
			others:        []string{"alpine", "docker.io/vieux/sshfs", "myreg.example.com:5000/plugin", "other.example.com/plugin", "sub.myreg.example.com/plugin"},
		},
		{
			serverAddress: "https://myreg.example.com:5000/v2/",
			mine:          []string{"myreg.example.com:5000/plugin"},
			others:        []string{"myreg.example.com/plugin", "alpine"},
		},
		{
			// What the docker CLI sends for Docker Hub.
			serverAddress: "https://index.docker.io/v1/",
			mine:          []string{"alpine", "docker.io/vieux/sshfs", "index.docker.io/vieux/sshfs", "registry-1.docker.io/vieux/sshfs"},
			others:        []string{"myreg.example.com/plugin", "docker.io.example.com/plugin"},
		},
	}
	for _, tc := range tests {
		want := registry.AuthConfig{Username: "u", Password: "p", ServerAddress: tc.serverAddress, IdentityToken: "it", RegistryToken: "rt"}
		header, err := registry.EncodeAuthConfig(want)
		assert.NilError(t, err)
		auth, err := FromEncoded(header)
		assert.NilError(t, err)
		for _, name := range tc.mine {
			cfg, err := auth(ctx, mustRef(t, name))
			assert.NilError(t, err)
			assert.Check(t, is.DeepEqual(cfg, &want), "server address %q, ref %q", tc.serverAddress, name)
			if cfg != nil {
				cfg.Password = "modified by caller"
			}
		}
		for _, name := range tc.others {
			cfg, err := auth(ctx, mustRef(t, name))
			assert.NilError(t, err)
			assert.Check(t, is.Nil(cfg), "server address %q, ref %q", tc.serverAddress, name)
		}
		_, err = auth(ctx, nil)
		assert.Check(t, cerrdefs.IsInvalidArgument(err), "%v", err)
	}
}

// TestFromEncodedWithoutServerAddress: a header that names no registry
// applies to every reference (documented with a warning).
func TestFromEncodedWithoutServerAddress(t *testing.T) {
	ctx := context.Background()
	want := registry.AuthConfig{Username: "u", Password: "p"}
	header, err := registry.EncodeAuthConfig(want)
	assert.NilError(t, err)
	auth, err := FromEncoded(header)
	assert.NilError(t, err)
	for _, name := range []string{"alpine", "myreg.example.com/plugin", "other.example.com:5000/x"} {
		cfg, err := auth(ctx, mustRef(t, name))
		assert.NilError(t, err)
		assert.Check(t, is.DeepEqual(cfg, &want), name)
		cfg.Password = "modified by caller"
	}
	cfg, err := auth(ctx, nil) // the reference is not even looked at
	assert.NilError(t, err)
	assert.Check(t, is.DeepEqual(cfg, &want))
}

func TestFromEncodedAnonymous(t *testing.T) {
	emptyJSON, err := registry.EncodeAuthConfig(registry.AuthConfig{ServerAddress: "myreg.example.com"})
	assert.NilError(t, err)
	for _, header := range []string{"", emptyJSON} {
		auth, err := FromEncoded(header)
		assert.NilError(t, err)
		cfg, err := auth(context.Background(), mustRef(t, "myreg.example.com/plugin"))
		assert.NilError(t, err)
		assert.Check(t, is.Nil(cfg), "header %q", header)
	}
}

// TestNoCredentialsForAnotherRegistry checks, for every constructor of
// this package, that credentials configured for one registry are never
// returned for a reference on another. Credentials name the address they
// were configured under (a credential helper in echo mode names the server
// URL it was asked about); an answer is allowed only if that address and
// the reference's host designate the same registry (normalizeHost).
func TestNoCredentialsForAnotherRegistry(t *testing.T) {
	withHelpers(t)
	t.Setenv("REGISTRYAUTH_TEST_HELPER_ECHO", "1")
	ctx := context.Background()
	addrs := []string{
		"docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io",
		"myreg.example.com", "https://myreg.example.com/v1/", "MyReg.Example.com",
		"myreg.example.com:5000", "http://myreg.example.com:5000", "sub.myreg.example.com",
		"example.com", "localhost:5000", "[::1]:5000",
	}
	refs := []string{
		"alpine", "docker.io/vieux/sshfs", "index.docker.io/vieux/sshfs", "registry-1.docker.io/vieux/sshfs",
		"myreg.example.com/p", "MyReg.Example.com/p", "myreg.example.com:5000/p", "myreg.example.com:5001/p",
		"sub.myreg.example.com/p", "example.com/p", "other.example.com/p", "localhost:5000/p", "localhost/p",
		"[::1]:5000/p", "docker.io.example.com/p",
	}
	const prefix = "for "
	// check resolves every reference with auth and returns how many got
	// credentials; owner tells whose credentials cfg holds.
	check := func(t *testing.T, what string, auth Func, owner func(cfg *registry.AuthConfig) string) int {
		t.Helper()
		var answered int
		for _, name := range refs {
			ref := mustRef(t, name)
			cfg, err := auth(ctx, ref)
			assert.NilError(t, err, "%s, ref %q", what, name)
			if cfg == nil {
				continue
			}
			answered++
			assert.Check(t, is.Equal(normalizeHost(owner(cfg)), normalizeHost(reference.Domain(ref))),
				"%s: ref %q got the credentials of %q", what, name, owner(cfg))
		}
		return answered
	}
	byUsername := func(cfg *registry.AuthConfig) string { return strings.TrimPrefix(cfg.Username, prefix) }
	byHelperAnswer := func(cfg *registry.AuthConfig) string {
		_, server, _ := strings.Cut(cfg.Username, "@")
		return server
	}

	for _, addr := range addrs {
		creds := registry.AuthConfig{Username: prefix + addr, Password: "pw"}
		n := check(t, "Static "+addr, Static(addr, creds), byUsername)
		assert.Check(t, n > 0, "Static %q answered no reference", addr)

		scoped := creds
		scoped.ServerAddress = addr
		header, err := registry.EncodeAuthConfig(scoped)
		assert.NilError(t, err)
		auth, err := FromEncoded(header)
		assert.NilError(t, err)
		n = check(t, "FromEncoded "+addr, auth, byUsername)
		assert.Check(t, n > 0, "FromEncoded %q answered no reference", addr)

		// One key per file, so that no exact match hides a looser one.
		path := writeConfig(t, `{"auths": {"`+addr+`": {"username": "`+prefix+addr+`", "password": "pw"}}}`)
		check(t, "FromDockerConfig auths "+addr, FromDockerConfig(path), byUsername)
		path = writeConfig(t, `{"credHelpers": {"`+addr+`": "`+perHostHelper+`"}}`)
		check(t, "FromDockerConfig credHelpers "+addr, FromDockerConfig(path), byHelperAnswer)
	}

	// All keys in one file, with and without a credsStore.
	var entries []string
	for _, addr := range addrs {
		entries = append(entries, `"`+addr+`": {"username": "`+prefix+addr+`", "password": "pw"}`)
	}
	auths := `"auths": {` + strings.Join(entries, ", ") + `}`
	n := check(t, "FromDockerConfig auths", FromDockerConfig(writeConfig(t, `{`+auths+`}`)), byUsername)
	assert.Check(t, n > 0)
	n = check(t, "FromDockerConfig credsStore", FromDockerConfig(writeConfig(t, `{`+auths+`, "credsStore": "`+storeHelper+`"}`)), byHelperAnswer)
	assert.Check(t, is.Equal(n, len(refs)), "the echoing credsStore answers every reference")
}
