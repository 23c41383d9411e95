package registryauth

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config"
	"github.com/docker/docker/api/types/registry"
	dockerregistry "github.com/docker/docker/registry"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// Oracles answer "with this config.json, which credentials does the docker
// CLI send to the daemon for 'docker pull ref'?", as a *registry.AuthConfig
// reduced by credentialsOf.
type oracle func(t *testing.T, configPath, ref string) *registry.AuthConfig

// credentialsOf reduces cfg to what a pull authenticates with: nil if it
// carries no credentials, else its credential fields and ServerAddress
// (the deprecated Email, which the CLI passes on, is left out).
func credentialsOf(cfg *registry.AuthConfig) *registry.AuthConfig {
	if cfg == nil || !hasCredentials(cfg) {
		return nil
	}
	return &registry.AuthConfig{
		Username:      cfg.Username,
		Password:      cfg.Password,
		Auth:          cfg.Auth,
		IdentityToken: cfg.IdentityToken,
		RegistryToken: cfg.RegistryToken,
		ServerAddress: cfg.ServerAddress,
	}
}

// goCLIOracle resolves like the docker CLI of this module's graph: its
// config.LoadDefaultConfigFile (which every docker command runs, platform
// default helper detection included), then, as "docker pull" does
// (trust.GetImageReferencesAndAuth), command.ResolveAuthConfig on the index
// that registry.ParseRepositoryInfo gives: the reference's domain, Docker
// Hub's being official. cli/command itself cannot be imported: it needs
// newer modules than this module pins, so ResolveAuthConfig's three lines
// are copied here.
func goCLIOracle(t *testing.T, configPath, ref string) *registry.AuthConfig {
	t.Helper()
	assert.Assert(t, filepath.Base(configPath) == config.ConfigFileName)
	config.SetDir(filepath.Dir(configPath))
	cfg := config.LoadDefaultConfigFile(io.Discard)

	named, err := reference.ParseNormalizedNamed(ref)
	assert.NilError(t, err)
	// command.ResolveAuthConfig, with ParseRepositoryInfo's index name
	// (the reference's domain; Docker Hub's is official) spelled out, as
	// moby v2's registry package no longer exports it:
	configKey := reference.Domain(named)
	if configKey == dockerregistry.IndexName {
		configKey = dockerregistry.IndexServer
	}
	a, _ := cfg.GetAuthConfig(configKey)
	return credentialsOf(&registry.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		Auth:          a.Auth,
		ServerAddress: a.ServerAddress,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	})
}

// dockerBinaryOracle runs the installed docker CLI's "docker pull" against
// a fake daemon on a unix socket that records the X-Registry-Auth header
// of the pull. It returns nil if no docker CLI is installed.
func dockerBinaryOracle(t *testing.T, helperPath string) oracle {
	t.Helper()
	bin, err := exec.LookPath("docker")
	if err != nil {
		return nil
	}
	sockDir, err := os.MkdirTemp("", "registryauth-dockerd-") // short: unix socket paths are limited
	assert.NilError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "docker.sock")
	l, err := net.Listen("unix", sock)
	assert.NilError(t, err)

	pulls := make(chan string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/_ping"):
			w.Header().Set("Api-Version", "1.50")
			w.Header().Set("Ostype", "linux")
			_, _ = io.WriteString(w, "OK")
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/images/create"):
			select {
			case pulls <- r.Header.Get(registry.AuthHeader):
			default:
				t.Errorf("more than one pull request for one docker pull")
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":"pulled"}`+"\n")
		default:
			t.Errorf("fake daemon: unexpected request %s %s", r.Method, r.URL)
			http.NotFound(w, r)
		}
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)

	home := t.TempDir()
	return func(t *testing.T, configPath, ref string) *registry.AuthConfig {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "pull", "--quiet", ref)
		cmd.Env = []string{
			"PATH=" + helperPath,
			"HOME=" + home,
			"DOCKER_CONFIG=" + filepath.Dir(configPath),
			"DOCKER_HOST=unix://" + sock,
			"DOCKER_CLI_HINTS=false",
		}
		out, err := cmd.CombinedOutput()
		assert.NilError(t, err, "docker pull %s: %s", ref, out)
		select {
		case header := <-pulls:
			cfg, err := registry.DecodeAuthConfig(header)
			assert.NilError(t, err)
			return credentialsOf(cfg)
		default:
			t.Fatalf("docker pull %s sent no pull request: %s", ref, out)
			return nil
		}
	}
}

// oracleRefs are on Docker Hub, on IP addresses or on localhost, which the
// CLI's ParseRepositoryInfo does not look up in DNS.
var oracleRefs = []string{
	"alpine", "docker.io/vieux/sshfs", "index.docker.io/library/alpine:3",
	"localhost:5000/team/plugin", "LocalHost:5000/team/plugin", "localhost/plugin",
	"127.0.0.1:5000/plugin", "127.0.0.1/plugin", "127.0.0.2/plugin", "127.0.0.3:5000/plugin",
	"127.0.0.4/plugin", "[::1]:5000/plugin",
}

// oracleConfigs are config.json files to resolve every oracleRefs entry
// with. None has two "auths" keys naming one host, for which the CLI's
// choice depends on map order.
var oracleConfigs = []struct{ name, content string }{
	{name: "no file content", content: ""},
	{name: "empty", content: `{}`},
	{name: "auths", content: `{
		"auths": {
			"https://index.docker.io/v1/": {"auth": "` + b64("hubuser:hubpass") + `"},
			"localhost:5000": {"username": "plainuser", "password": "plainpass"},
			"https://127.0.0.1:5000/v1/": {"auth": "` + b64("legacyuser:pass:with:colons") + `", "email": "x@example.com"},
			"http://127.0.0.2": {"identitytoken": "idtok"},
			"127.0.0.3:5000": {"registrytoken": "regtok"},
			"127.0.0.4": {},
			"[::1]:5000": {"auth": "` + b64("authuser:authpass") + `", "username": "ignored", "password": "ignored"}
		},
		"psFormat": "table {{.ID}}",
		"proxies": {"default": {"httpProxy": "http://127.0.0.1:3128"}}
	}`},
	{name: "host spelt in another case", content: `{"auths": {"LocalHost:5000": {"username": "mixed", "password": "pw"}}}`},
	{name: "Docker Hub under other keys", content: `{"auths": {
		"docker.io": {"username": "a", "password": "pw"},
		"index.docker.io": {"username": "b", "password": "pw"},
		"https://index.docker.io/v1": {"username": "c", "password": "pw"},
		"registry-1.docker.io": {"username": "d", "password": "pw"},
		"http://localhost/": {"username": "e", "password": "pw"}
	}}`},
	{name: "credsStore", content: `{
		"auths": {
			"https://index.docker.io/v1/": {},
			"127.0.0.1:5000": {"username": "fileuser", "password": "filepass"},
			"127.0.0.3:5000": {"registrytoken": "regtok", "identitytoken": "fileidtok"},
			"localhost:5000": {"registrytoken": "regtok2"},
			"127.0.0.2": {"registrytoken": "regtok3"}
		},
		"credsStore": "` + storeHelper + `"
	}`},
	{name: "credHelpers over credsStore", content: `{
		"auths": {"127.0.0.1:5000": {"username": "fileuser", "password": "filepass"}},
		"credsStore": "` + storeHelper + `",
		"credHelpers": {
			"localhost:5000": "` + perHostHelper + `",
			"https://127.0.0.3:5000/v1/": "` + perHostHelper + `",
			"127.0.0.1:5000": "",
			"docker.io": "` + perHostHelper + `"
		}
	}`},
	{name: "credHelpers without credsStore", content: `{
		"auths": {"localhost:5000": {"username": "fileuser", "password": "filepass"}, "127.0.0.2": {"username": "u2", "password": "p2"}},
		"credHelpers": {"https://index.docker.io/v1/": "` + perHostHelper + `", "127.0.0.2": "` + storeHelper + `", "127.0.0.4": "` + storeHelper + `"}
	}`},
}

// TestFromDockerConfigMatchesDockerCLI runs every oracleConfigs file and
// oracleRefs reference through FromDockerConfig, the Go-built CLI oracle and,
// where one is installed, the docker CLI itself, and requires one answer.
func TestFromDockerConfigMatchesDockerCLI(t *testing.T) {
	withHelpers(t)
	helperDir, err := buildHelpers()
	assert.NilError(t, err)
	oracles := map[string]oracle{"Go-built CLI": goCLIOracle}
	if docker := dockerBinaryOracle(t, helperDir); docker != nil {
		oracles["docker binary"] = docker
	} else {
		t.Log("docker CLI not installed: comparing with the Go-built CLI oracle only")
	}
	// Only the fake helpers: no platform default helper may be detected.
	t.Setenv("PATH", helperDir)
	for _, ref := range oracleRefs {
		named, err := reference.ParseNormalizedNamed(ref)
		assert.NilError(t, err)
		host, _, _ := net.SplitHostPort(reference.Domain(named))
		if host == "" {
			host = reference.Domain(named)
		}
		host = strings.Trim(host, "[]")
		assert.Assert(t, host == "docker.io" || strings.EqualFold(host, "localhost") || net.ParseIP(host) != nil,
			"oracle reference %q would make the CLI's code query DNS", ref)
	}

	var withCredentials int
	for _, tc := range oracleConfigs {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.content)
			auth := FromDockerConfig(path)
			for _, ref := range oracleRefs {
				ours, err := auth(context.Background(), mustRef(t, ref))
				assert.NilError(t, err, ref)
				if ours != nil {
					withCredentials++
				}
				for name, cli := range oracles {
					assert.Check(t, is.DeepEqual(ours, cli(t, path, ref)), "%s: ref %q", name, ref)
				}
			}
		})
	}
	// The table means something only if some answers carry credentials.
	assert.Check(t, withCredentials >= 15, "only %d answers with credentials", withCredentials)
}

// TestFromDockerConfigNoDefaultHelper pins the documented difference with
// the CLI: for a file that configures no credentials at all the CLI uses
// the platform's default helper if installed (here the fake one, as
// docker-credential-secretservice), FromDockerConfig does not.
func TestFromDockerConfigNoDefaultHelper(t *testing.T) {
	calls := withHelpers(t)
	dir := installHelper(t, "secretservice")
	docker := dockerBinaryOracle(t, dir)
	t.Setenv("PATH", dir)
	path := writeConfig(t, `{}`)
	const ref = "localhost:5000/plugin"

	want := &registry.AuthConfig{Username: "secretservice-user", Password: "secretservice-secret", ServerAddress: "localhost:5000"}
	assert.Check(t, is.DeepEqual(goCLIOracle(t, path, ref), want))
	if docker != nil {
		assert.Check(t, is.DeepEqual(docker(t, path, ref), want))
	} else {
		t.Log("docker CLI not installed: checking the Go-built CLI oracle only")
	}
	n := len(calls())
	assert.Check(t, is.Nil(resolve(t, FromDockerConfig(path), ref)))
	assert.Check(t, is.Len(calls(), n), "FromDockerConfig ran a helper")
}
