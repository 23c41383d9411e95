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
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/configfile"
	clitypes "github.com/docker/cli/cli/config/types"
	"github.com/docker/docker/api/types/registry"
	dockerregistry "github.com/docker/docker/registry"
)

// FromDockerConfig returns a Func that resolves credentials from the docker
// CLI config file (config.json) at path, with the docker CLI's own code
// (github.com/docker/cli/cli/config/configfile), so that a reference gets
// the credentials "docker pull" and "docker plugin install" would send for
// it with that file:
//
//   - The lookup key is "https://index.docker.io/v1/" for Docker Hub
//     (docker.io and index.docker.io) and the reference's host[:port]
//     otherwise.
//   - credHelpers[key], if present, names the credential helper, even over
//     credsStore; an empty name there selects the "auths" entries.
//     Otherwise credsStore, if set, names the helper. A helper runs as
//     "docker-credential-<name> get"; its answer replaces the username,
//     password and identity token of the host's "auths" entry (only a
//     registry token stays), "credentials not found" counting as empty
//     ones, and a "<token>" username means an identity token.
//   - Without a helper, "auths"[key] is used, or else an "auths" key that
//     reduces to key once a scheme and path are removed (such as
//     "https://host/v1/"); if several keys do, which one is used is
//     unspecified, as with the CLI. Matching is case-sensitive, and Docker
//     Hub credentials are only found under "https://index.docker.io/v1/".
//     An "auth" field (base64 "user:password") overrides "username" and
//     "password"; "identitytoken" and "registrytoken" are passed on. Like
//     the CLI, a malformed "auth" field in any entry spoils the whole file.
//   - ServerAddress is the matched "auths" key, or the lookup key for a
//     helper. A result without any credentials (such as the "{}" the CLI
//     writes next to a helper) is nil: anonymous.
//
// The file is read on every call, so rotated credentials are picked up
// without a restart, and the Func is safe for concurrent use. A missing
// file means anonymous pulls (nil, nil).
//
// This Func differs from the CLI where a daemon must: it fails where the
// CLI warns and pulls anyway (a file that is not valid, a helper that
// fails or is missing), it detects no platform default helper when the
// file configures none (a daemon has no business opening a desktop
// keychain), it rejects helper names containing a path separator, and it
// runs no helper once ctx is done. A helper's standard error goes to this
// process's standard error, as with the CLI.
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
	host, _, err := refHost(ref)
	if err != nil {
		return nil, err
	}
	// Every error names the file and the registry, never anything read.
	prefix := fmt.Sprintf("registryauth: docker config %q, registry %q", path, host)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", prefix, err)
	}
	cfg, err := loadDockerConfig(path, prefix)
	if err != nil || cfg == nil {
		return nil, err
	}

	key := authConfigKey(host)
	helper := configuredHelper(cfg, key)
	if helper != "" {
		if err := checkHelper(ctx, prefix, helper); err != nil {
			return nil, err
		}
	}
	ac, err := cfg.GetAuthConfig(key)
	if err != nil {
		// Only a helper fails here; the file store does not.
		return nil, helperError(prefix, helper, err)
	}
	return authConfig(ac), nil
}

// authConfigKey returns the key under which the docker CLI looks up the
// credentials of a registry host as found in a reference: IndexServer
// ("https://index.docker.io/v1/") for Docker Hub, the host[:port]
// otherwise. It is the CLI's unexported cli/command.getAuthConfigKey.
// registry.GetAuthConfigKey(registry.ParseRepositoryInfo(ref).Index),
// which "docker pull" uses, gives the same key but also resolves the host
// in DNS.
func authConfigKey(host string) string {
	if host == dockerregistry.IndexName || host == dockerregistry.IndexHostname {
		return dockerregistry.IndexServer
	}
	return host
}

// loadDockerConfig reads the config file at path with the CLI's
// LoadFromReader. It returns nil, nil if the file does not exist.
func loadDockerConfig(path, prefix string) (*configfile.ConfigFile, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, readError(prefix, err)
	}
	defer f.Close()

	fi, err := f.Stat()
	if err != nil {
		return nil, readError(prefix, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%s: config path is a directory: %w", prefix, cerrdefs.ErrInvalidArgument)
	}
	cfg := configfile.New(path)
	if err := cfg.LoadFromReader(f); err != nil {
		return nil, loadError(prefix, err)
	}
	return cfg, nil
}

// readError classifies a failure to read the config file. The wrapped
// *fs.PathError names only the path and the system error.
func readError(prefix string, err error) error {
	var class error = cerrdefs.ErrUnknown
	if errors.Is(err, fs.ErrPermission) {
		class = cerrdefs.ErrPermissionDenied
	}
	return fmt.Errorf("%s: reading the file: %w: %w", prefix, err, class)
}

// loadError describes an error of configfile.LoadFromReader without its
// text, which may quote the file (see the package documentation).
// LoadFromReader fails either decoding the JSON or decoding an "auth"
// field of "auths", of any registry.
func loadError(prefix string, err error) error {
	var (
		pathErr    *fs.PathError
		syntaxErr  *json.SyntaxError
		typeErr    *json.UnmarshalTypeError
		corruptErr base64.CorruptInputError
	)
	switch {
	case errors.As(err, &pathErr):
		return readError(prefix, err)
	case errors.As(err, &syntaxErr), errors.As(err, &typeErr), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s: %w: %w", prefix, redactDecodeError(err), cerrdefs.ErrInvalidArgument)
	case errors.As(err, &corruptErr):
		return fmt.Errorf(`%s: an "auth" field is not valid base64: %w: %w`, prefix, corruptErr, cerrdefs.ErrInvalidArgument)
	default:
		return fmt.Errorf(`%s: an "auth" field does not decode to "username:password": %w`, prefix, cerrdefs.ErrInvalidArgument)
	}
}

// configuredHelper returns the name of the credential helper that
// cfg.GetAuthConfig(key) runs, or "" if it runs none. It mirrors the
// CLI's unexported configfile.getConfiguredCredentialStore, so that the
// helper can be checked before the CLI's code runs it.
func configuredHelper(cfg *configfile.ConfigFile, key string) string {
	if helper, ok := cfg.CredentialHelpers[key]; ok {
		return helper
	}
	return cfg.CredentialsStore
}

// helperPrefix is prepended to a helper's name to form its program name.
const helperPrefix = "docker-credential-"

// checkHelper is done before the CLI's code runs a credential helper, to
// keep guarantees that code does not give:
//   - a done context runs no helper (the CLI runs it without a context);
//   - only a program found in PATH is run (the CLI runs a name containing
//     a path separator as a path);
//   - a missing helper is classified as such, errdefs.ErrFailedPrecondition
//     wrapping the exec.Error (the CLI reports it like any failed run, in
//     an error that quotes the helper's output, which is not used).
func checkHelper(ctx context.Context, prefix, helper string) error {
	if strings.ContainsAny(helper, `/\`+"\x00") {
		return fmt.Errorf("%s: invalid credential helper name %q: %w", prefix, helper, cerrdefs.ErrInvalidArgument)
	}
	program := helperPrefix + helper
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: not running credential helper %q: %w", prefix, program, err)
	}
	if _, err := exec.LookPath(program); err != nil {
		return fmt.Errorf("%s: credential helper %q: %w: %w", prefix, program, err, cerrdefs.ErrFailedPrecondition)
	}
	return nil
}

// helperError describes a credential helper's failure reported by
// cfg.GetAuthConfig. That error is not wrapped: when the helper fails it
// quotes the helper's output, which may contain anything. What the helper
// printed on standard error has already gone to this process's.
func helperError(prefix, helper string, err error) error {
	program := helperPrefix + helper
	var (
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syntaxErr), errors.As(err, &typeErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// The helper succeeded but its answer is not a credentials response.
		return fmt.Errorf("%s: credential helper %q: malformed response: %w", prefix, program, cerrdefs.ErrFailedPrecondition)
	default:
		return fmt.Errorf("%s: credential helper %q failed: %w", prefix, program, cerrdefs.ErrUnavailable)
	}
}

// authConfig converts the CLI's AuthConfig, returning nil if it holds no
// credentials. The deprecated Email is dropped and Auth is always empty
// (LoadFromReader decodes it into Username and Password).
func authConfig(ac clitypes.AuthConfig) *registry.AuthConfig {
	c := &registry.AuthConfig{
		Username:      ac.Username,
		Password:      ac.Password,
		Auth:          ac.Auth,
		ServerAddress: ac.ServerAddress,
		IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken,
	}
	if !hasCredentials(c) {
		return nil
	}
	return c
}
