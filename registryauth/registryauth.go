// Package registryauth provides ready-made registry credential lookups for
// the plugin controller's WithRegistryAuth option.
//
// Each constructor returns a [Func]. The controller calls it from Prepare,
// once for the plugin reference being pulled or upgraded, on the swarm
// agent's goroutines; every Func returned by this package is therefore safe
// for concurrent use and keeps no mutable state between calls. A nil
// *registry.AuthConfig with a nil error means "pull anonymously".
//
// Every call returns a freshly allocated AuthConfig, so callers may modify it.
//
// [Static] holds one registry's credentials, [FromEncoded] those of an
// X-Registry-Auth value, and [FromDockerConfig] resolves them from a docker
// CLI config.json with the CLI's own code (github.com/docker/cli/cli/config),
// credential helpers included, as "docker pull" would.
//
// # Credentials go only to their registry
//
// No Func of this package returns one registry's credentials for a
// reference on another registry; the only exception is FromEncoded given a
// header without ServerAddress, which names no registry (see its warning).
//
// # Secrets and errors
//
// Passwords, identity tokens, registry tokens and encoded X-Registry-Auth
// values never appear in an error returned by this package, nor in any
// error it wraps. Error messages name only the config file path, the
// registry host (as found in the reference) and the credential helper name.
// Decoder errors from encoding/json are deliberately not wrapped, because
// their text quotes input (a SyntaxError names the offending character,
// which may be part of a password; some UnmarshalTypeErrors print numeric
// literals) and the standard library makes no promise to quote less; they
// are replaced by a message carrying only the byte offset. Likewise the
// error of a failing credential helper, in which the CLI's credential store
// (through docker-credential-helpers/client) quotes the helper's output
// verbatim, is discarded. The package does not log.
//
// Messages read "registryauth: <what>: <cause>: <class>": each cause
// follows ": ", as fmt.Errorf("...: %w") writes it, and the class (or the
// context's error) comes last.
//
// # Error classification
//
// Errors are classified with github.com/containerd/errdefs (the class is
// wrapped, so errdefs.IsXxx and errors.Is work, as does docker's own
// errdefs, whose interfaces containerd's classes implement):
//
//   - errdefs.ErrInvalidArgument: caller or configuration mistakes that
//     a retry cannot fix: an empty host or path, a nil reference, a config
//     path that is a directory, a config file or encoded header that is not
//     valid JSON/base64, a malformed "auth" field (in any "auths" entry of
//     the file: like the CLI, the whole file is decoded), a header whose
//     ServerAddress names no host, a credential helper name containing a
//     path separator.
//   - errdefs.ErrPermissionDenied: the config file exists but may not be
//     read (wraps the [io/fs.ErrPermission] cause).
//   - errdefs.ErrFailedPrecondition: the configured credential helper
//     cannot be used at all: the docker-credential-<name> program is not
//     found in PATH or not executable (wraps the [os/exec.Error]), or it
//     exited successfully but printed something that is not a credentials
//     response. The host has to be fixed; retrying will not help.
//   - errdefs.ErrUnavailable: the helper failed to run or exited with an
//     error other than "credentials not found". Helpers front keychains,
//     secret services and cloud APIs that may be locked or unreachable for
//     a while, so this is treated as transient. Nothing is wrapped: the
//     CLI's credential store reports the failure only as text that quotes
//     the helper's output. What the helper wrote to its standard error has
//     gone to this process's standard error.
//   - errdefs.ErrUnknown: any other failure to read the config file
//     (wraps the underlying I/O error).
//
// # Cancellation
//
// Funcs from FromDockerConfig check ctx when called and again right before
// running a credential helper; a done context yields an error wrapping
// ctx.Err() and no helper is started. A helper that is already running is
// not interrupted (the CLI's credential store runs it without a context);
// helpers are expected to answer quickly. Funcs from Static and FromEncoded
// never block and ignore ctx.
package registryauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	dockerregistry "github.com/docker/docker/registry"
)

// Func is the signature plugin.WithRegistryAuth accepts. It returns the
// credentials to use for pulling ref, or nil for an anonymous pull.
type Func = func(ctx context.Context, ref reference.Named) (*registry.AuthConfig, error)

// normalizeHost reduces a registry address to the form used for matching,
// the way the docker CLI's ConvertToHostname does: any scheme and path are
// removed, host:port is kept. In addition the host is lowercased, user
// information is dropped, and every Docker Hub alias ("docker.io",
// "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/")
// becomes "docker.io".
func normalizeHost(addr string) string {
	h := strings.TrimSpace(addr)
	if _, rest, ok := strings.Cut(h, "://"); ok {
		h = rest
	}
	h, _, _ = strings.Cut(h, "/")
	if i := strings.LastIndexByte(h, '@'); i >= 0 {
		h = h[i+1:]
	}
	h = strings.ToLower(h)
	switch h {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return dockerregistry.IndexName
	}
	return h
}

// refHost returns the registry host of ref as written in the reference and
// its normalised form.
func refHost(ref reference.Named) (host, norm string, err error) {
	if ref == nil {
		return "", "", fmt.Errorf("registryauth: nil image reference: %w", cerrdefs.ErrInvalidArgument)
	}
	host = reference.Domain(ref)
	return host, normalizeHost(host), nil
}

// Static returns a Func that answers cfg for references whose registry host
// matches host, and nil (anonymous) for all others.
//
// host is normalised like the docker CLI does: a scheme and path are
// ignored, a port is kept and significant, and "docker.io",
// "index.docker.io", "registry-1.docker.io" and
// "https://index.docker.io/v1/" all designate Docker Hub. Comparison is
// case-insensitive.
//
// If cfg.ServerAddress is empty it is filled in with the address the docker
// CLI would use: "https://index.docker.io/v1/" for Docker Hub, the
// normalised host[:port] otherwise.
//
// If host is empty (after normalisation) every call fails with an error
// wrapping errdefs.ErrInvalidArgument, rather than silently pulling
// anonymously.
func Static(host string, cfg registry.AuthConfig) Func {
	want := normalizeHost(host)
	if want == "" {
		return func(context.Context, reference.Named) (*registry.AuthConfig, error) {
			return nil, fmt.Errorf("registryauth: Static: empty registry host: %w", cerrdefs.ErrInvalidArgument)
		}
	}
	if cfg.ServerAddress == "" {
		cfg.ServerAddress = want
		if want == dockerregistry.IndexName {
			cfg.ServerAddress = dockerregistry.IndexServer
		}
	}
	return func(_ context.Context, ref reference.Named) (*registry.AuthConfig, error) {
		_, norm, err := refHost(ref)
		if err != nil {
			return nil, err
		}
		if norm != want {
			return nil, nil
		}
		c := cfg // copy: callers may modify the result
		return &c, nil
	}
}

// FromEncoded returns a Func for the credentials encoded in header, an
// X-Registry-Auth value (base64url-encoded JSON), decoded once with
// docker's own registry.DecodeAuthConfig.
//
// If the header names a registry in its ServerAddress (the docker CLI
// always sets it), its credentials are returned only for references on
// that registry, and nil (anonymous) for every other: it behaves as
// Static(ServerAddress, decoded config), with the same host normalisation
// and Docker Hub aliases. A ServerAddress from which no host can be taken
// (such as "https://") is an error wrapping errdefs.ErrInvalidArgument.
//
// WARNING: a header without ServerAddress carries no registry, so its
// credentials are returned for every reference, whatever its registry:
// used executor-wide, they are sent to any registry a plugin is pulled
// from, Docker Hub included. Set ServerAddress unless that is intended.
//
// An empty header, or one that decodes to a config without any
// credentials, yields anonymous pulls. A header that cannot be decoded is
// reported with an error wrapping errdefs.ErrInvalidArgument; neither the
// header nor any part of its decoded content appears in that error.
func FromEncoded(header string) (Func, error) {
	cfg, err := registry.DecodeAuthConfig(header)
	if err != nil {
		if _, b64Err := base64.URLEncoding.DecodeString(header); b64Err != nil {
			// Name the base64 error whichever decoder met it: moby v2's
			// decoder replaces it with a message redactDecodeError cannot
			// classify.
			err = b64Err
		}
		return nil, fmt.Errorf("registryauth: invalid encoded registry auth: %w: %w", redactDecodeError(err), cerrdefs.ErrInvalidArgument)
	}
	switch {
	case !hasCredentials(cfg):
		return func(context.Context, reference.Named) (*registry.AuthConfig, error) {
			return nil, nil
		}, nil
	case cfg.ServerAddress == "":
		saved := *cfg
		return func(context.Context, reference.Named) (*registry.AuthConfig, error) {
			c := saved // copy: callers may modify the result
			return &c, nil
		}, nil
	case normalizeHost(cfg.ServerAddress) == "":
		return nil, fmt.Errorf("registryauth: invalid encoded registry auth: server address names no registry host: %w", cerrdefs.ErrInvalidArgument)
	default:
		return Static(cfg.ServerAddress, *cfg), nil
	}
}

// hasCredentials reports whether cfg carries anything to authenticate with.
func hasCredentials(cfg *registry.AuthConfig) bool {
	return cfg.Username != "" || cfg.Password != "" || cfg.Auth != "" ||
		cfg.IdentityToken != "" || cfg.RegistryToken != ""
}

// redactDecodeError turns an error from decoding JSON (possibly read through
// a base64 decoder) into one whose text cannot contain decoded content.
// encoding/json errors are replaced rather than wrapped because their
// messages quote input (see the package documentation); base64 and EOF
// errors only carry an offset and are wrapped as they are.
func redactDecodeError(err error) error {
	var (
		syntaxErr  *json.SyntaxError
		typeErr    *json.UnmarshalTypeError
		corruptErr base64.CorruptInputError
	)
	switch {
	case errors.As(err, &corruptErr):
		return fmt.Errorf("invalid base64: %w", corruptErr)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("truncated JSON: %w", io.ErrUnexpectedEOF)
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("malformed JSON at byte offset %d", syntaxErr.Offset)
	case errors.As(err, &typeErr):
		return fmt.Errorf("JSON value of the wrong type at byte offset %d", typeErr.Offset)
	default:
		return errors.New("malformed JSON")
	}
}
