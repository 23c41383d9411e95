package registryauth

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"gotest.tools/v3/assert"
)

// tmpRoot holds files shared by all tests of this binary (the fake
// credential helper); it is removed when the binary exits.
var tmpRoot string

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "registryauth-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		_ = os.RemoveAll(tmpRoot)
		os.Exit(code)
	}))
}

// helperLeakSecret is printed by the fake helper for the registries for
// which it fails, to prove its output never reaches an error.
const helperLeakSecret = "HELPER-OUTPUT-S3CRET-7f3a"

// fakeHelperSource implements the "get" action of the docker credential
// helper protocol. Like real helpers (credentials.Serve) it reports errors,
// including "credentials not found", on stdout with exit status 1.
// Its answers depend on the server URL and on its own name, so tests can
// tell which helper was used; with $REGISTRYAUTH_TEST_HELPER_ECHO set it
// answers every server URL with the username "<name>@<server URL>". Every
// call is logged to $REGISTRYAUTH_TEST_HELPER_LOG as "<name> <server URL>".
const fakeHelperSource = `package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	name = strings.TrimPrefix(name, "docker-credential-")
	if len(os.Args) != 2 || os.Args[1] != "get" {
		fmt.Println("unsupported action")
		os.Exit(1)
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	server := strings.TrimSpace(string(in))
	if log := os.Getenv("REGISTRYAUTH_TEST_HELPER_LOG"); log != "" {
		f, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			fmt.Fprintf(f, "%s %s\n", name, server)
			f.Close()
		}
	}
	answer := func(user, secret string) {
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"ServerURL": server, "Username": user, "Secret": secret})
	}
	if os.Getenv("REGISTRYAUTH_TEST_HELPER_ECHO") != "" {
		answer(name+"@"+server, name+"-secret")
		return
	}
	switch server {
	case "https://index.docker.io/v1/", "myreg.example.com", "myreg.example.com:5000", "localhost:5000", "127.0.0.2":
		answer(name+"-user", name+"-secret")
	case "token.example.com", "127.0.0.3:5000":
		answer("<token>", name+"-idtoken")
	case "empty.example.com", "127.0.0.4":
		answer("", "")
	case "fail.example.com":
		fmt.Println("backend exploded while handling HELPER_SECRET")
		os.Exit(1)
	case "garbage.example.com":
		fmt.Println("{\"Username\": \"u\", \"Secret\": HELPER_SECRET")
	default:
		fmt.Println("credentials not found in native keychain")
		os.Exit(1)
	}
}
`

var (
	helperOnce sync.Once
	helperDir  string
	helperErr  error
)

// helper names the fake helper is installed under.
const (
	storeHelper   = "teststore"
	perHostHelper = "testhelper"
)

func exeSuffix() string {
	if runtime.GOOS == "windows" {
		return ".exe"
	}
	return ""
}

// buildHelpers compiles the fake helper once per test binary and installs
// it as docker-credential-teststore and docker-credential-testhelper.
func buildHelpers() (string, error) {
	helperOnce.Do(func() {
		src := filepath.Join(tmpRoot, "src")
		bin := filepath.Join(tmpRoot, "bin")
		for _, d := range []string{src, bin} {
			if helperErr = os.MkdirAll(d, 0o755); helperErr != nil {
				return
			}
		}
		code := strings.ReplaceAll(fakeHelperSource, "HELPER_SECRET", helperLeakSecret)
		if helperErr = os.WriteFile(filepath.Join(src, "main.go"), []byte(code), 0o644); helperErr != nil {
			return
		}
		if helperErr = os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fakehelper\n\ngo 1.21\n"), 0o644); helperErr != nil {
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			helperErr = fmt.Errorf("go toolchain needed to build the fake credential helper: %w", err)
			return
		}
		first := filepath.Join(bin, "docker-credential-"+storeHelper+exeSuffix())
		cmd := exec.Command(goBin, "build", "-o", first, ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			helperErr = fmt.Errorf("building fake credential helper: %w\n%s", err, out)
			return
		}
		data, err := os.ReadFile(first)
		if err != nil {
			helperErr = err
			return
		}
		helperErr = os.WriteFile(filepath.Join(bin, "docker-credential-"+perHostHelper+exeSuffix()), data, 0o755)
		helperDir = bin
	})
	return helperDir, helperErr
}

// installHelper installs the fake helper as docker-credential-<name> in a
// directory of its own, which it returns.
func installHelper(t *testing.T, name string) string {
	t.Helper()
	dir, err := buildHelpers()
	assert.NilError(t, err)
	data, err := os.ReadFile(filepath.Join(dir, "docker-credential-"+storeHelper+exeSuffix()))
	assert.NilError(t, err)
	own := t.TempDir()
	assert.NilError(t, os.WriteFile(filepath.Join(own, "docker-credential-"+name+exeSuffix()), data, 0o755))
	return own
}

// withHelpers makes the fake helpers the first ones found in PATH for the
// duration of t, and returns a function listing the helper calls made
// since, as "<helper> <server URL>".
func withHelpers(t *testing.T) (calls func() []string) {
	t.Helper()
	dir, err := buildHelpers()
	assert.NilError(t, err)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	logFile := filepath.Join(t.TempDir(), "helper-calls.log")
	t.Setenv("REGISTRYAUTH_TEST_HELPER_LOG", logFile)
	return func() []string {
		b, err := os.ReadFile(logFile)
		if os.IsNotExist(err) {
			return nil
		}
		assert.NilError(t, err)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}
