package registryauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/docker/api/types/registry"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

// Recognisable secrets planted in inputs of failing calls.
const (
	pwSecret       = "PW-S3CRET-91c2"
	numericSecret  = "98765432123" // a numeric password (a JSON type error)
	idTokenSecret  = "IDTOKEN-S3CRET-55aa"
	regTokenSecret = "REGTOKEN-S3CRET-1b2b"
)

// decoyAuths is an auths entry for another registry, full of secrets, added
// to every failing config.
const decoyAuths = `"decoy.example.com": {"auth": "` + "UFctUzNDUkVULTkxYzI6UFctUzNDUkVULTkxYzI=" + `", "identitytoken": "` + idTokenSecret + `", "registrytoken": "` + regTokenSecret + `"}`

var allSecrets = []string{pwSecret, numericSecret, idTokenSecret, regTokenSecret, helperLeakSecret,
	base64.StdEncoding.EncodeToString([]byte(pwSecret + ":" + pwSecret))}

// errorTexts renders err, and everything it wraps, in all the ways a caller
// might print or log it.
func errorTexts(err error) []string {
	var texts []string
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		texts = append(texts, e.Error(), fmt.Sprintf("%v", e), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e))
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return texts
}

func assertNoSecrets(t *testing.T, err error, secrets ...string) {
	t.Helper()
	for _, text := range errorTexts(err) {
		for _, s := range secrets {
			assert.Check(t, !strings.Contains(text, s), "secret %q leaked in %q", s, text)
		}
	}
}

// errorClasses are the causes every error of this package ends with: its
// errdefs class, or the context's error.
var errorClasses = []error{
	cerrdefs.ErrInvalidArgument, cerrdefs.ErrPermissionDenied, cerrdefs.ErrFailedPrecondition,
	cerrdefs.ErrUnavailable, context.Canceled, context.DeadlineExceeded, cerrdefs.ErrUnknown,
}

// assertErrorStyle checks the one message style of this package:
// "registryauth: <what>: <cause>: <class>", each cause after ": " as
// fmt.Errorf("...: %w") writes it, the class last and never in parentheses.
func assertErrorStyle(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	assert.Check(t, strings.HasPrefix(msg, "registryauth: "), msg)
	var class error
	for _, c := range errorClasses {
		if errors.Is(err, c) {
			class = c
			break
		}
	}
	assert.Assert(t, class != nil, "unclassified error: %s", msg)
	assert.Check(t, strings.HasSuffix(msg, ": "+class.Error()), "class not last: %s", msg)
	for _, c := range errorClasses {
		assert.Check(t, !strings.Contains(msg, "("+c.Error()+")"), "class in parentheses: %s", msg)
	}
}

func TestErrorsNeverContainSecrets(t *testing.T) {
	withHelpers(t)
	dir := t.TempDir()
	cfgFile := func(content string) string {
		return writeConfig(t, content)
	}
	withStore := func(store string) string {
		return cfgFile(`{"auths": {` + decoyAuths + `}, "credsStore": "` + store + `"}`)
	}
	regularFile := cfgFile(`{}`)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithTimeout(context.Background(), -1)
	defer cancel2()

	alpine := mustRef(t, "alpine")
	encode := func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }
	fromEncodedErr := func(header string) func() error {
		return func() error {
			_, err := FromEncoded(header)
			return err
		}
	}
	// fromConfigErr looks up ref ("" for a nil reference) in the config at path.
	fromConfigErr := func(ctx context.Context, path, ref string) func() error {
		var r reference.Named
		if ref != "" {
			r = mustRef(t, ref)
		}
		return func() error {
			cfg, err := FromDockerConfig(path)(ctx, r)
			if cfg != nil {
				return errors.New("unexpected credentials returned")
			}
			return err
		}
	}

	tests := []struct {
		name     string
		call     func() error
		class    func(error) bool
		mentions []string // substrings the message must contain
		extra    func(t *testing.T, err error)
	}{
		{
			name:     "config: truncated JSON",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "myreg.example.com": {"password": "`+pwSecret), "myreg.example.com/p"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "myreg.example.com"`, "truncated JSON"},
			extra: func(t *testing.T, err error) {
				assert.Check(t, errors.Is(err, io.ErrUnexpectedEOF))
			},
		},
		{
			name:     "config: syntax error at the secret",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "myreg.example.com": {"password": `+pwSecret+`}}}`), "myreg.example.com/p"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "myreg.example.com"`, "malformed JSON at byte offset"},
		},
		{
			name:     "config: numeric password",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "myreg.example.com": {"password": `+numericSecret+`}}}`), "myreg.example.com/p"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "myreg.example.com"`, "wrong type at byte offset"},
		},
		{
			name:     "config: auth is not base64",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "myreg.example.com": {"auth": "`+pwSecret+`!!"}}}`), "myreg.example.com/p"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "myreg.example.com"`, "base64"},
			extra: func(t *testing.T, err error) {
				var corrupt base64.CorruptInputError
				assert.Check(t, errors.As(err, &corrupt))
			},
		},
		{
			// Like the CLI's LoadFromReader, one bad entry spoils the file.
			name:     "config: another registry's auth is not base64",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "other.example.com": {"auth": "`+pwSecret+`!!"}}}`), "alpine"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "docker.io"`, "base64"},
		},
		{
			name:     "config: auth without colon",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "myreg.example.com": {"auth": "`+b64(pwSecret)+`"}}}`), "myreg.example.com/p"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "myreg.example.com"`},
		},
		{
			name:     "config: auth with empty username",
			call:     fromConfigErr(context.Background(), cfgFile(`{"auths": {`+decoyAuths+`, "https://index.docker.io/v1/": {"auth": "`+b64(":"+pwSecret)+`"}}}`), "alpine"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `registry "docker.io"`},
		},
		{
			name:     "config: path is a directory",
			call:     fromConfigErr(context.Background(), dir, "alpine"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{dir, `registry "docker.io"`, "directory"},
		},
		{
			name:     "config: path below a regular file",
			call:     fromConfigErr(context.Background(), filepath.Join(regularFile, "config.json"), "alpine"),
			class:    cerrdefs.IsUnknown,
			mentions: []string{regularFile, `registry "docker.io"`},
			extra: func(t *testing.T, err error) {
				var pathErr *os.PathError
				assert.Check(t, errors.As(err, &pathErr))
			},
		},
		{
			name:     "config: empty path",
			call:     fromConfigErr(context.Background(), "", "alpine"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"empty config path"},
		},
		{
			name:  "config: nil reference",
			call:  fromConfigErr(context.Background(), withStore(storeHelper), ""),
			class: cerrdefs.IsInvalidArgument,
		},
		{
			name:     "helper: fails, printing a secret",
			call:     fromConfigErr(context.Background(), withStore(storeHelper), "fail.example.com/p"),
			class:    cerrdefs.IsUnavailable,
			mentions: []string{"config.json", `"docker-credential-teststore"`, `registry "fail.example.com"`, "failed"},
			extra: func(t *testing.T, err error) {
				// The premise: the CLI's own error quotes the helper's output.
				cfg := configfile.New("")
				cfg.CredentialsStore = storeHelper
				_, raw := cfg.GetAuthConfig("fail.example.com")
				assert.Check(t, is.ErrorContains(raw, helperLeakSecret))
			},
		},
		{
			name:     "helper: malformed response containing a secret",
			call:     fromConfigErr(context.Background(), withStore(storeHelper), "garbage.example.com/p"),
			class:    cerrdefs.IsFailedPrecondition,
			mentions: []string{"config.json", `"docker-credential-teststore"`, `registry "garbage.example.com"`, "malformed response"},
		},
		{
			name:     "helper: not installed",
			call:     fromConfigErr(context.Background(), withStore("not-installed"), "myreg.example.com/p"),
			class:    cerrdefs.IsFailedPrecondition,
			mentions: []string{"config.json", `"docker-credential-not-installed"`, `registry "myreg.example.com"`},
			extra: func(t *testing.T, err error) {
				assert.Check(t, errors.Is(err, exec.ErrNotFound))
			},
		},
		{
			name:     "helper: name with a path separator",
			call:     fromConfigErr(context.Background(), withStore("../../bin/sh"), "myreg.example.com/p"),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"config.json", `"../../bin/sh"`, `registry "myreg.example.com"`},
		},
		{
			name:     "helper: context canceled",
			call:     fromConfigErr(canceled, withStore(storeHelper), "myreg.example.com/p"),
			class:    func(err error) bool { return errors.Is(err, context.Canceled) },
			mentions: []string{"config.json", `registry "myreg.example.com"`},
		},
		{
			name:     "helper: context deadline exceeded",
			call:     fromConfigErr(expired, withStore(storeHelper), "myreg.example.com/p"),
			class:    func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
			mentions: []string{"config.json", `registry "myreg.example.com"`},
		},
		{
			name:     "encoded: not base64",
			call:     fromEncodedErr("!!" + pwSecret),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"invalid encoded registry auth", "base64"},
		},
		{
			name:  "encoded: syntax error at the secret",
			call:  fromEncodedErr(encode(`{"password": ` + pwSecret + `}`)),
			class: cerrdefs.IsInvalidArgument,
		},
		{
			name:  "encoded: numeric password",
			call:  fromEncodedErr(encode(`{"username": "u", "password": ` + numericSecret + `}`)),
			class: cerrdefs.IsInvalidArgument,
		},
		{
			name:  "encoded: truncated",
			call:  fromEncodedErr(encode(`{"identitytoken": "` + idTokenSecret)),
			class: cerrdefs.IsInvalidArgument,
		},
		{
			name:     "encoded: server address without a host",
			call:     fromEncodedErr(encode(`{"password": "` + pwSecret + `", "serveraddress": "https://"}`)),
			class:    cerrdefs.IsInvalidArgument,
			mentions: []string{"server address"},
		},
		{
			name: "static: empty host",
			call: func() error {
				_, err := Static("", registry.AuthConfig{Password: pwSecret})(context.Background(), alpine)
				return err
			},
			class: cerrdefs.IsInvalidArgument,
		},
		{
			name: "static: nil reference",
			call: func() error {
				_, err := Static("docker.io", registry.AuthConfig{Password: pwSecret})(context.Background(), nil)
				return err
			},
			class: cerrdefs.IsInvalidArgument,
		},
	}
	if runtime.GOOS != "windows" && os.Geteuid() != 0 {
		unreadable := cfgFile(`{"auths": {` + decoyAuths + `}}`)
		assert.NilError(t, os.Chmod(unreadable, 0))
		tests = append(tests, struct {
			name     string
			call     func() error
			class    func(error) bool
			mentions []string
			extra    func(t *testing.T, err error)
		}{
			name:     "config: unreadable",
			call:     fromConfigErr(context.Background(), unreadable, "alpine"),
			class:    cerrdefs.IsPermissionDenied,
			mentions: []string{unreadable},
			extra: func(t *testing.T, err error) {
				assert.Check(t, errors.Is(err, os.ErrPermission))
			},
		})
	} else {
		t.Log("not testing an unreadable config file: running as root or on Windows")
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			assert.Assert(t, err != nil)
			t.Log(err)
			assertErrorStyle(t, err)
			assert.Check(t, tc.class(err), "wrong classification: %v", err)
			for _, m := range tc.mentions {
				assert.Check(t, is.ErrorContains(err, m))
			}
			assertNoSecrets(t, err, allSecrets...)
			if tc.extra != nil {
				tc.extra(t, err)
			}
		})
	}
}

func TestCanceledContextDoesNotRunHelper(t *testing.T) {
	calls := withHelpers(t)
	path := writeConfig(t, `{"credsStore": "`+storeHelper+`"}`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := FromDockerConfig(path)(ctx, mustRef(t, "myreg.example.com/p"))
	assert.Check(t, errors.Is(err, context.Canceled))

	// The same lookup with a live context does run it.
	cfg, err := FromDockerConfig(path)(context.Background(), mustRef(t, "myreg.example.com/p"))
	assert.NilError(t, err)
	assert.Check(t, is.Equal(cfg.Username, "teststore-user"))
	assert.Check(t, is.DeepEqual(calls(), []string{"teststore myreg.example.com"}))
}
