package registryauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"sort"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
	"github.com/docker/docker/api/types/registry"
)

const (
	// helperPrefix is prepended to credsStore/credHelpers names to form the
	// credential helper program name, as the docker CLI does.
	helperPrefix = "docker-credential-"
	// tokenUsername is the username with which credential helpers mark the
	// secret as an identity token rather than a password.
	tokenUsername = "<token>"
)

// dockerConfig is the part of the docker CLI's config.json (see
// github.com/docker/cli/cli/config/configfile.ConfigFile) that is relevant
// to registry credentials. Other fields are ignored.
type dockerConfig struct {
	Auths       map[string]authEntry `json:"auths"`
	CredsStore  string               `json:"credsStore"`
	CredHelpers map[string]string    `json:"credHelpers"`
}

// authEntry is one value of config.json's "auths" map.
type authEntry struct {
	Auth          string `json:"auth"` // base64("username:password")
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// FromDockerConfig returns a Func that resolves credentials from the docker
// CLI config file (config.json) at path, the way the docker CLI does for
// "docker pull".
//
// The file is read on every call, so rotated credentials are picked up
// without a restart. A missing file means anonymous pulls (nil, nil); a
// file that cannot be read or is not valid JSON is an error.
//
// For a reference whose registry host is H, the lookup key is
// "https://index.docker.io/v1/" if H is Docker Hub and H itself otherwise
// (the CLI's registry.GetAuthConfigKey). Then, as in the CLI:
//
//  1. If credHelpers has an entry for the key, that helper is used; an
//     entry with an empty name selects the plain "auths" entries even if
//     credsStore is set. Otherwise credsStore, if set, names the helper.
//  2. A helper is run as "docker-credential-<name> get" through
//     github.com/docker/docker-credential-helpers/client with the key as
//     the server URL. A "credentials not found" answer means anonymous (the
//     "auths" entries are not consulted, as in the CLI). A "<token>"
//     username means the secret is an identity token.
//  3. Without a helper, the "auths" entry for the key is used: its "auth"
//     field (base64 "user:password") takes precedence over plain
//     "username"/"password"; "identitytoken" and "registrytoken" are passed
//     on. An entry without any credentials (such as the "{}" placeholders
//     the CLI writes when a helper is in use) means anonymous.
//
// Keys are matched exactly first. Failing that, any key that designates the
// same host is accepted: "host", "host:port", "https://host/v1/" and
// "http://host" all match, case-insensitively. Unlike the CLI, this
// fallback also applies to Docker Hub aliases ("docker.io",
// "index.docker.io", "registry-1.docker.io") and to credHelpers keys; when
// several keys qualify the lexically smallest is used, so the choice is
// deterministic. ServerAddress is set to the matched key (auths) or the
// lookup key (helpers), as the CLI does.
//
// Unlike the CLI, no platform default helper is auto-detected when the file
// configures none: a daemon has no business opening a desktop keychain.
// Helper names containing a path separator are rejected. The helper's
// standard error goes to this process's standard error, as with the CLI.
//
// If path is empty every call fails with an error wrapping
// errdefs.ErrInvalidArgument. See the package documentation for the error
// classification.
func FromDockerConfig(path string) Func {
	return func(ctx context.Context, ref reference.Named) (*registry.AuthConfig, error) {
		return resolveDockerConfig(ctx, path, ref)
	}
}

func resolveDockerConfig(ctx context.Context, path string, ref reference.Named) (*registry.AuthConfig, error) {
	if path == "" {
		return nil, fmt.Errorf("registryauth: FromDockerConfig: empty config path: %w", cerrdefs.ErrInvalidArgument)
	}
	host, norm, err := refHost(ref)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("registryauth: looking up credentials for registry %q: %w", host, err)
	}
	cfg, err := loadDockerConfig(path)
	if err != nil || cfg == nil {
		return nil, err
	}

	key := configKey(host, norm)
	helper := cfg.CredsStore
	if _, h, ok := lookup(cfg.CredHelpers, key, norm); ok {
		helper = h
	}
	if helper != "" {
		return fromHelper(ctx, path, helper, key, host)
	}
	matched, entry, ok := lookup(cfg.Auths, key, norm)
	if !ok {
		return nil, nil
	}
	return entry.authConfig(path, host, matched)
}

// loadDockerConfig reads the config file at path. It returns nil, nil if the
// file does not exist.
func loadDockerConfig(path string) (*dockerConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, readError(path, err)
	}
	defer f.Close()

	fi, err := f.Stat()
	if err != nil {
		return nil, readError(path, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("registryauth: docker config %q: is a directory: %w", path, cerrdefs.ErrInvalidArgument)
	}

	// Like the CLI (configfile.LoadFromReader): an empty file is an empty
	// config, and only the first JSON value is read.
	var cfg dockerConfig
	if err := json.NewDecoder(f).Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			return nil, readError(path, err)
		}
		return nil, fmt.Errorf("registryauth: docker config %q: %w: %w", path, redactDecodeError(err), cerrdefs.ErrInvalidArgument)
	}
	return &cfg, nil
}

// readError classifies a failure to read the config file. The wrapped
// *fs.PathError names only the path and the system error.
func readError(path string, err error) error {
	var class error = cerrdefs.ErrUnknown
	if errors.Is(err, fs.ErrPermission) {
		class = cerrdefs.ErrPermissionDenied
	}
	return fmt.Errorf("registryauth: reading docker config %q: %w: %w", path, err, class)
}

// lookup finds the entry of m for a registry: the exact key first, then the
// lexically smallest key that normalises to the same host.
func lookup[V any](m map[string]V, key, norm string) (string, V, bool) {
	if v, ok := m[key]; ok {
		return key, v, true
	}
	var candidates []string
	for k := range m {
		if normalizeHost(k) == norm {
			candidates = append(candidates, k)
		}
	}
	if len(candidates) == 0 {
		var zero V
		return "", zero, false
	}
	sort.Strings(candidates)
	return candidates[0], m[candidates[0]], true
}

// authConfig converts an "auths" entry. It returns nil if the entry holds
// no credentials.
func (e authEntry) authConfig(path, host, serverAddress string) (*registry.AuthConfig, error) {
	username, password := e.Username, e.Password
	if e.Auth != "" {
		var err error
		if username, password, err = decodeAuthField(e.Auth); err != nil {
			return nil, fmt.Errorf("registryauth: docker config %q: auths entry for registry %q: %w: %w", path, host, err, cerrdefs.ErrInvalidArgument)
		}
	}
	if username == "" && password == "" && e.IdentityToken == "" && e.RegistryToken == "" {
		return nil, nil
	}
	return &registry.AuthConfig{
		Username:      username,
		Password:      password,
		IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken,
		ServerAddress: serverAddress,
	}, nil
}

// decodeAuthField decodes an "auth" value like the CLI's
// configfile.decodeAuth does. Its errors never include the value.
func decodeAuthField(s string) (username, password string, err error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// base64.CorruptInputError only carries an offset.
		return "", "", fmt.Errorf(`"auth" field is not valid base64: %w`, err)
	}
	username, password, ok := strings.Cut(string(b), ":")
	if !ok || username == "" {
		return "", "", errors.New(`"auth" field does not decode to "username:password"`)
	}
	return username, strings.Trim(password, "\x00"), nil
}

// fromHelper asks the credential helper docker-credential-<helper> for the
// credentials of serverURL. host is the registry host used in errors.
func fromHelper(ctx context.Context, path, helper, serverURL, host string) (*registry.AuthConfig, error) {
	if strings.ContainsAny(helper, `/\`+string(os.PathSeparator)+"\x00") {
		return nil, fmt.Errorf("registryauth: docker config %q: invalid credential helper name %q for registry %q: %w", path, helper, host, cerrdefs.ErrInvalidArgument)
	}
	program := helperPrefix + helper
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("registryauth: not running credential helper %q for registry %q: %w", program, host, err)
	}

	base := client.NewShellProgramFunc(program)
	var run *recordingProgram
	creds, err := client.Get(func(args ...string) client.Program {
		run = &recordingProgram{Program: base(args...)}
		return run
	}, serverURL)
	if err != nil {
		if credentials.IsErrCredentialsNotFound(err) {
			return nil, nil
		}
		// err is deliberately dropped: client.Get quotes the helper's
		// output in it, which may contain anything.
		return nil, helperError(program, host, run)
	}

	ac := &registry.AuthConfig{ServerAddress: serverURL}
	if creds.Username == tokenUsername {
		ac.IdentityToken = creds.Secret
	} else {
		ac.Username = creds.Username
		ac.Password = creds.Secret
	}
	if ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" {
		return nil, nil
	}
	return ac, nil
}

// helperError describes a failed helper invocation from what the program
// run recorded, without anything the helper printed.
func helperError(program, host string, run *recordingProgram) error {
	prefix := fmt.Sprintf("registryauth: credential helper %q for registry %q", program, host)
	if run == nil || !run.ran {
		// Not reachable with the current client, which always runs the program.
		return fmt.Errorf("%s: failed without running: %w", prefix, cerrdefs.ErrUnknown)
	}
	if run.err == nil {
		return fmt.Errorf("%s: malformed response: %w", prefix, cerrdefs.ErrFailedPrecondition)
	}
	var exitErr *exec.ExitError
	if errors.As(run.err, &exitErr) {
		// "exit status N"; Stderr is not captured (the client forwards it).
		return fmt.Errorf("%s: %w: %w", prefix, run.err, cerrdefs.ErrUnavailable)
	}
	// Could not be started: not found in PATH, not executable, ...
	return fmt.Errorf("%s: %w: %w", prefix, run.err, cerrdefs.ErrFailedPrecondition)
}

// recordingProgram wraps a credential helper program to keep the error from
// running it, which client.Get only reports flattened into a string
// together with the helper's output.
type recordingProgram struct {
	client.Program
	ran bool
	err error
}

func (p *recordingProgram) Output() ([]byte, error) {
	out, err := p.Program.Output()
	p.ran, p.err = true, err
	return out, err
}
