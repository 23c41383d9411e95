package registryauth

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/registry"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// writeConfig writes a config.json into a fresh temp dir and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	assert.NilError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func resolve(t *testing.T, auth Func, name string) *registry.AuthConfig {
	t.Helper()
	cfg, err := auth(context.Background(), mustRef(t, name))
	assert.NilError(t, err, name)
	return cfg
}

func TestFromDockerConfigAuths(t *testing.T) {
	path := writeConfig(t, `{
	"auths": {
		"https://index.docker.io/v1/": {"auth": "`+b64("hubuser:hubpass")+`"},
		"myreg.example.com": {"username": "plainuser", "password": "plainpass"},
		"myreg.example.com:5000": {"auth": "`+b64("portuser:pass:with:colons")+`"},
		"https://legacy.example.com/v1/": {"auth": "`+b64("legacyuser:legacypass")+`", "email": "x@example.com"},
		"http://insecure.example.com": {"identitytoken": "idtok"},
		"tokens.example.com": {"registrytoken": "regtok"},
		"placeholder.example.com": {},
		"both.example.com": {"auth": "`+b64("authuser:authpass")+`", "username": "ignored", "password": "ignored"},
		"MixedCase.Example.com": {"username": "mixeduser", "password": "mixedpass"}
	},
	"psFormat": "whatever the CLI stores here is ignored"
}`)
	auth := FromDockerConfig(path)

	tests := []struct {
		ref  string
		want *registry.AuthConfig
	}{
		{ref: "alpine", want: &registry.AuthConfig{Username: "hubuser", Password: "hubpass", ServerAddress: "https://index.docker.io/v1/"}},
		{ref: "docker.io/vieux/sshfs:latest", want: &registry.AuthConfig{Username: "hubuser", Password: "hubpass", ServerAddress: "https://index.docker.io/v1/"}},
		{ref: "myreg.example.com/team/plugin", want: &registry.AuthConfig{Username: "plainuser", Password: "plainpass", ServerAddress: "myreg.example.com"}},
		{ref: "myreg.example.com:5000/plugin", want: &registry.AuthConfig{Username: "portuser", Password: "pass:with:colons", ServerAddress: "myreg.example.com:5000"}},
		{ref: "legacy.example.com/plugin", want: &registry.AuthConfig{Username: "legacyuser", Password: "legacypass", ServerAddress: "https://legacy.example.com/v1/"}},
		{ref: "insecure.example.com/plugin", want: &registry.AuthConfig{IdentityToken: "idtok", ServerAddress: "http://insecure.example.com"}},
		{ref: "tokens.example.com/plugin", want: &registry.AuthConfig{RegistryToken: "regtok", ServerAddress: "tokens.example.com"}},
		{ref: "both.example.com/plugin", want: &registry.AuthConfig{Username: "authuser", Password: "authpass", ServerAddress: "both.example.com"}},
		{ref: "MixedCase.Example.com/plugin", want: &registry.AuthConfig{Username: "mixeduser", Password: "mixedpass", ServerAddress: "MixedCase.Example.com"}},
		// Anonymous: placeholder entry, unknown host, other port, subdomain,
		// a host spelt in another case (the CLI matches keys
		// case-sensitively).
		{ref: "placeholder.example.com/plugin"},
		{ref: "mixedcase.example.com/plugin"},
		{ref: "unknown.example.com/plugin"},
		{ref: "myreg.example.com:5001/plugin"},
		{ref: "sub.myreg.example.com/plugin"},
	}
	for _, tc := range tests {
		assert.Check(t, is.DeepEqual(resolve(t, auth, tc.ref), tc.want), tc.ref)
	}
}

func TestFromDockerConfigHubKeys(t *testing.T) {
	// Like the CLI, Docker Hub credentials are found only under
	// "https://index.docker.io/v1/": the key is not reduced to a host for
	// Docker Hub, so no other spelling of it is found.
	for _, key := range []string{"docker.io", "index.docker.io", "https://index.docker.io/v1", "https://registry-1.docker.io/"} {
		path := writeConfig(t, `{"auths": {"`+key+`": {"username": "hub", "password": "pw"}}}`)
		for _, ref := range []string{"alpine", "docker.io/vieux/sshfs", "index.docker.io/vieux/sshfs"} {
			assert.Check(t, is.Nil(resolve(t, FromDockerConfig(path), ref)), "key %q, ref %q", key, ref)
		}
	}

	// The exact CLI key is used for every spelling of Docker Hub in a
	// reference that the CLI takes for Docker Hub: docker.io and
	// index.docker.io. For the CLI, registry-1.docker.io is a registry of
	// its own, looked up under its own name.
	path := writeConfig(t, `{"auths": {
		"registry-1.docker.io": {"username": "r1", "password": "pw"},
		"https://index.docker.io/v1/": {"username": "exact", "password": "pw"},
		"docker.io": {"username": "alias", "password": "pw"}
	}}`)
	for _, ref := range []string{"alpine", "docker.io/library/alpine", "index.docker.io/vieux/sshfs"} {
		assert.Check(t, is.DeepEqual(resolve(t, FromDockerConfig(path), ref),
			&registry.AuthConfig{Username: "exact", Password: "pw", ServerAddress: "https://index.docker.io/v1/"}), ref)
	}
	assert.Check(t, is.DeepEqual(resolve(t, FromDockerConfig(path), "registry-1.docker.io/library/alpine"),
		&registry.AuthConfig{Username: "r1", Password: "pw", ServerAddress: "registry-1.docker.io"}))
}

func TestFromDockerConfigAnonymousFiles(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"", "  \n", "null", "{}", `{"auths": {}}`, `{"auths": null, "credHelpers": {}}`} {
		path := writeConfig(t, content)
		assert.Check(t, is.Nil(resolve(t, FromDockerConfig(path), "myreg.example.com/plugin")), "content %q", content)
	}
	missing := FromDockerConfig(filepath.Join(dir, "does-not-exist", "config.json"))
	assert.Check(t, is.Nil(resolve(t, missing, "alpine")))
}

func TestFromDockerConfigRereadsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	auth := FromDockerConfig(path)
	ref := "myreg.example.com/plugin"

	assert.Check(t, is.Nil(resolve(t, auth, ref)), "file not created yet")

	assert.NilError(t, os.WriteFile(path, []byte(`{"auths": {"myreg.example.com": {"auth": "`+b64("u:first")+`"}}}`), 0o600))
	assert.Check(t, is.Equal(resolve(t, auth, ref).Password, "first"))

	assert.NilError(t, os.WriteFile(path, []byte(`{"auths": {"myreg.example.com": {"auth": "`+b64("u:rotated")+`"}}}`), 0o600))
	assert.Check(t, is.Equal(resolve(t, auth, ref).Password, "rotated"))

	assert.NilError(t, os.Remove(path))
	assert.Check(t, is.Nil(resolve(t, auth, ref)), "file removed")
}

func TestFromDockerConfigCredsStore(t *testing.T) {
	calls := withHelpers(t)
	path := writeConfig(t, `{
	"auths": {
		"https://index.docker.io/v1/": {},
		"unknown.example.com": {"username": "fileuser", "password": "filepass"}
	},
	"credsStore": "`+storeHelper+`"
}`)
	auth := FromDockerConfig(path)

	assert.Check(t, is.DeepEqual(resolve(t, auth, "alpine"),
		&registry.AuthConfig{Username: "teststore-user", Password: "teststore-secret", ServerAddress: "https://index.docker.io/v1/"}))
	assert.Check(t, is.DeepEqual(resolve(t, auth, "myreg.example.com:5000/plugin"),
		&registry.AuthConfig{Username: "teststore-user", Password: "teststore-secret", ServerAddress: "myreg.example.com:5000"}))
	// "<token>" means identity token.
	assert.Check(t, is.DeepEqual(resolve(t, auth, "token.example.com/plugin"),
		&registry.AuthConfig{IdentityToken: "teststore-idtoken", ServerAddress: "token.example.com"}))
	// "credentials not found" is anonymous; like the CLI, the auths entry is
	// not consulted when a helper is configured.
	assert.Check(t, is.Nil(resolve(t, auth, "unknown.example.com/plugin")))
	// A helper answering empty credentials is anonymous too.
	assert.Check(t, is.Nil(resolve(t, auth, "empty.example.com/plugin")))

	assert.Check(t, is.DeepEqual(calls(), []string{
		"teststore https://index.docker.io/v1/",
		"teststore myreg.example.com:5000",
		"teststore token.example.com",
		"teststore unknown.example.com",
		"teststore empty.example.com",
	}))
}

func TestFromDockerConfigCredHelpers(t *testing.T) {
	calls := withHelpers(t)
	path := writeConfig(t, `{
	"auths": {
		"plain.example.com": {"username": "fileuser", "password": "filepass"}
	},
	"credsStore": "`+storeHelper+`",
	"credHelpers": {
		"myreg.example.com": "`+perHostHelper+`",
		"https://token.example.com/v1/": "`+perHostHelper+`",
		"plain.example.com": ""
	}
}`)
	auth := FromDockerConfig(path)

	// Per-host helper wins over credsStore.
	assert.Check(t, is.DeepEqual(resolve(t, auth, "myreg.example.com/plugin"),
		&registry.AuthConfig{Username: "testhelper-user", Password: "testhelper-secret", ServerAddress: "myreg.example.com"}))
	// Other hosts (here: another port) use credsStore.
	assert.Check(t, is.Equal(resolve(t, auth, "myreg.example.com:5000/plugin").Username, "teststore-user"))
	assert.Check(t, is.Equal(resolve(t, auth, "alpine").Username, "teststore-user"))
	// Like the CLI, credHelpers keys are matched exactly:
	// "https://token.example.com/v1/" does not name token.example.com's
	// helper, so credsStore answers.
	assert.Check(t, is.DeepEqual(resolve(t, auth, "token.example.com/plugin"),
		&registry.AuthConfig{IdentityToken: "teststore-idtoken", ServerAddress: "token.example.com"}))
	// An empty helper name selects the auths entries, bypassing credsStore.
	assert.Check(t, is.DeepEqual(resolve(t, auth, "plain.example.com/plugin"),
		&registry.AuthConfig{Username: "fileuser", Password: "filepass", ServerAddress: "plain.example.com"}))

	assert.Check(t, is.DeepEqual(calls(), []string{
		"testhelper myreg.example.com",
		"teststore myreg.example.com:5000",
		"teststore https://index.docker.io/v1/",
		"teststore token.example.com",
	}))
}

// TestFromDockerConfigConcurrent is meant for -race: one Func shared by
// many goroutines, as the swarm agent does.
func TestFromDockerConfigConcurrent(t *testing.T) {
	calls := withHelpers(t)
	path := writeConfig(t, `{
	"auths": {"myreg.example.com:5000": {"auth": "`+b64("fileuser:filepass")+`"}},
	"credHelpers": {"myreg.example.com": "`+perHostHelper+`"}
}`)
	auth := FromDockerConfig(path)
	static := Static("myreg.example.com", registry.AuthConfig{Username: "static"})

	file, helper := mustRef(t, "myreg.example.com:5000/p"), mustRef(t, "myreg.example.com/p")
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers*3)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for j := range 20 {
				if cfg, err := auth(ctx, file); err != nil || cfg.Password != "filepass" {
					errs <- err
					return
				}
				if cfg, err := static(ctx, helper); err != nil || cfg.Username != "static" {
					errs <- err
					return
				}
				if j%10 == i%10 { // a few helper runs per worker
					if cfg, err := auth(ctx, helper); err != nil || cfg.Username != "testhelper-user" {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("unexpected result (err=%v)", err)
	}
	assert.Check(t, is.Len(calls(), workers*2))
}

// TestFromDockerConfigHelperKeepsRegistryToken: like the CLI's credential
// store, a helper's answer replaces the username, password and identity
// token of the host's "auths" entry and keeps its registry token, even
// when the helper has no credentials for the host.
func TestFromDockerConfigHelperKeepsRegistryToken(t *testing.T) {
	withHelpers(t)
	path := writeConfig(t, `{
	"auths": {
		"myreg.example.com": {"username": "fileuser", "password": "filepass", "registrytoken": "rt1"},
		"https://token.example.com/v1/": {"identitytoken": "fileidtok", "registrytoken": "rt2"},
		"unknown.example.com": {"username": "fileuser", "password": "filepass", "registrytoken": "rt3"}
	},
	"credsStore": "`+storeHelper+`"
}`)
	auth := FromDockerConfig(path)
	assert.Check(t, is.DeepEqual(resolve(t, auth, "myreg.example.com/plugin"),
		&registry.AuthConfig{Username: "teststore-user", Password: "teststore-secret", RegistryToken: "rt1", ServerAddress: "myreg.example.com"}))
	assert.Check(t, is.DeepEqual(resolve(t, auth, "token.example.com/plugin"),
		&registry.AuthConfig{IdentityToken: "teststore-idtoken", RegistryToken: "rt2", ServerAddress: "token.example.com"}))
	// "credentials not found": only the registry token is left, and the
	// CLI's store leaves no ServerAddress either.
	assert.Check(t, is.DeepEqual(resolve(t, auth, "unknown.example.com/plugin"),
		&registry.AuthConfig{RegistryToken: "rt3"}))
}
