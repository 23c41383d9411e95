// Command volplugin is the managed plugin that the forked-daemon harness
// (package integration/dockerd) publishes and runs: a volume driver
// (docker.volumedriver/1.0) serving moby's plugin protocol on
// /run/docker/plugins/p.sock inside its rootfs, where dockerd bind-mounts
// its plugin socket directory.
//
// It keeps each volume as a directory under /data, the plugin's
// propagated mount, which dockerd keeps across plugin upgrades (it lives
// next to the rootfs, not in it), so a volume created by one version is
// still answered by the next.
//
// Every answer about a volume carries a Status that identifies who served
// it: "tag" is the content of /tag in the rootfs (the plugin's version,
// "1" or "2"), "version" the VERSION environment variable and "started"
// the time the process started. The harness builds it static (CGO_ENABLED=0): the rootfs
// holds nothing else.
//
// A mode, the content of /mode in the rootfs (health_test.go publishes
// tags that have one; none or empty: answer everything at once, as always)
// or else the MODE environment variable, makes it a plugin that is slow or
// stops answering, for the readiness and liveness scenarios. A file, not
// only the env: an upgrade in place keeps the installed plugin's env but
// replaces its rootfs. The modes:
//
//   - slow:SECONDS: for SECONDS after the process starts, every request is
//     answered 503 with the error "volplugin: starting; answering from
//     TIME" (TIME in RFC 3339, UTC); then it answers as usual.
//   - hang-after:SECONDS: it answers as usual for SECONDS after the
//     process starts, then hangs: every request is held unanswered until
//     the client gives up or the process stops. It hangs once per
//     installation: the hang leaves a marker in /data (not a volume: a
//     volume name never starts with a dot), and a process that starts with
//     the marker there never hangs, so a restarted plugin answers.
//   - never: every request is held unanswered from the start.
//
// In every mode the socket is bound at once and SIGTERM stops the process.
// It prints one line on its stdout when it starts, "volplugin: started",
// with its tag and mode, which dockerd logs (at info level) with the
// plugin's ID; errors go to stderr, as before.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	socketPath = "/run/docker/plugins/p.sock"
	dataDir    = "/data"
	tagFile    = "/tag"
	modeFile   = "/mode"
	// hungMarker records in the propagated mount, which outlives the
	// process, that a process of this plugin has hung (MODE hang-after).
	hungMarker = dataDir + "/.volplugin-hung"
)

// info logs what is not an error, on stdout.
var info = log.New(os.Stdout, "volplugin: ", 0)

func main() {
	log.SetFlags(0)
	log.SetPrefix("volplugin: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	tag, err := os.ReadFile(tagFile)
	if err != nil {
		return err
	}
	started := time.Now()
	mode := os.Getenv("MODE")
	if b, err := os.ReadFile(modeFile); err == nil && mode == "" {
		mode = strings.TrimSpace(string(b))
	}
	g, err := newGate(mode, started)
	if err != nil {
		return err
	}
	d := &driver{status: map[string]any{
		"tag":     strings.TrimSpace(string(tag)),
		"version": os.Getenv("VERSION"),
		"started": started.UTC().Format(time.RFC3339Nano),
	}}
	if mode != "" {
		d.status["mode"] = mode
	}
	info.Printf("started: tag %s, mode %q%s", d.status["tag"], mode, g.describe())
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o755); err != nil {
		return err
	}
	_ = os.Remove(socketPath)
	l, err := net.Listen("unix", socketPath)
	if err != nil {
		return err
	}
	// As PID 1 of its container the process gets no default signal
	// handling: without this, dockerd's SIGTERM at disable would be ignored
	// until its kill timeout.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	srv := &http.Server{Handler: g.wrap(d.mux())}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case <-stop:
		return srv.Close()
	case err := <-served:
		return err
	}
}

type driver struct {
	status map[string]any // who answers; fixed for the life of the process
}

type volume struct {
	Name       string
	Mountpoint string         `json:",omitempty"`
	Status     map[string]any `json:",omitempty"`
}

type request struct {
	Name string
	ID   string
}

func (d *driver) mux() *http.ServeMux {
	m := http.NewServeMux()
	handle := func(endpoint string, fn func(request) (any, error)) {
		m.HandleFunc("POST /"+endpoint, func(w http.ResponseWriter, r *http.Request) {
			var req request
			_ = json.NewDecoder(r.Body).Decode(&req) // some endpoints send no body
			resp, err := fn(req)
			w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
			if err != nil {
				resp = map[string]string{"Err": err.Error()}
			}
			_ = json.NewEncoder(w).Encode(resp)
		})
	}
	handle("Plugin.Activate", func(request) (any, error) {
		return map[string][]string{"Implements": {"VolumeDriver"}}, nil
	})
	handle("VolumeDriver.Capabilities", func(request) (any, error) {
		return map[string]any{"Capabilities": map[string]string{"Scope": "local"}}, nil
	})
	handle("VolumeDriver.Create", func(r request) (any, error) {
		dir, err := volumeDir(r.Name)
		if err != nil {
			return nil, err
		}
		return struct{}{}, os.MkdirAll(dir, 0o755)
	})
	handle("VolumeDriver.Remove", func(r request) (any, error) {
		dir, err := d.existing(r.Name)
		if err != nil {
			return nil, err
		}
		return struct{}{}, os.RemoveAll(dir)
	})
	handle("VolumeDriver.Get", func(r request) (any, error) {
		dir, err := d.existing(r.Name)
		if err != nil {
			return nil, err
		}
		return map[string]volume{"Volume": {Name: r.Name, Mountpoint: dir, Status: d.status}}, nil
	})
	handle("VolumeDriver.List", func(request) (any, error) {
		entries, err := os.ReadDir(dataDir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		vols := []volume{}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue // hungMarker
			}
			vols = append(vols, volume{Name: e.Name(), Mountpoint: filepath.Join(dataDir, e.Name())})
		}
		return map[string][]volume{"Volumes": vols}, nil
	})
	pathOf := func(r request) (any, error) {
		dir, err := d.existing(r.Name)
		if err != nil {
			return nil, err
		}
		return map[string]string{"Mountpoint": dir}, nil
	}
	handle("VolumeDriver.Path", pathOf)
	handle("VolumeDriver.Mount", pathOf)
	handle("VolumeDriver.Unmount", func(r request) (any, error) {
		_, err := d.existing(r.Name)
		return struct{}{}, err
	})
	return m
}

// volumeDir returns the directory of the volume called name, refusing
// names that are not a single path element.
func volumeDir(name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("invalid volume name %q", name)
	}
	return filepath.Join(dataDir, name), nil
}

// existing returns the directory of the volume called name, or an error if
// the volume does not exist.
func (d *driver) existing(name string) (string, error) {
	dir, err := volumeDir(name)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("no such volume: %s (%w)", name, err)
	}
	return dir, nil
}

// gate is what MODE makes of every request: answered (the zero gate),
// refused while starting, or held unanswered.
type gate struct {
	readyAt    time.Time // slow: refuse until then
	hangAt     time.Time // hang-after: hold from then on; never: the start
	hungBefore bool      // hang-after, but a process of the plugin has hung
}

// newGate parses mode for a process started at started.
func newGate(mode string, started time.Time) (*gate, error) {
	name, arg, _ := strings.Cut(mode, ":")
	seconds := func() (time.Duration, error) {
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || f < 0 {
			return 0, fmt.Errorf("MODE %q: want %s:SECONDS", mode, name)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	g := &gate{}
	switch name {
	case "":
	case "slow":
		d, err := seconds()
		if err != nil {
			return nil, err
		}
		g.readyAt = started.Add(d)
	case "hang-after":
		d, err := seconds()
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(hungMarker); err == nil {
			g.hungBefore = true // this process answers
			break
		}
		g.hangAt = started.Add(d)
		time.AfterFunc(d, func() {
			info.Printf("hanging: no request is answered from now on")
			if err := os.WriteFile(hungMarker, []byte(g.hangAt.UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
				log.Printf("writing %s: %v", hungMarker, err)
			}
		})
	case "never":
		g.hangAt = started
	default:
		return nil, fmt.Errorf("unknown MODE %q (want slow:SECONDS, hang-after:SECONDS or never)", mode)
	}
	return g, nil
}

func (g *gate) describe() string {
	var parts []string
	if !g.readyAt.IsZero() {
		parts = append(parts, "answering from "+g.readyAt.UTC().Format(time.RFC3339Nano))
	}
	if !g.hangAt.IsZero() {
		parts = append(parts, "hanging from "+g.hangAt.UTC().Format(time.RFC3339Nano))
	}
	if g.hungBefore {
		parts = append(parts, "not hanging: a process of this plugin has hung before ("+hungMarker+")")
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, ", ")
}

// wrap applies the gate to h's requests.
func (g *gate) wrap(h http.Handler) http.Handler {
	if g.readyAt.IsZero() && g.hangAt.IsZero() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read the body first: the server notices that the client has gone
		// (the request's context ends) only once the body is read.
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		now := time.Now()
		if !g.hangAt.IsZero() && !now.Before(g.hangAt) {
			<-r.Context().Done() // held: the client gives up or the process stops
			return
		}
		if now.Before(g.readyAt) {
			w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"Err": "volplugin: starting; answering from " + g.readyAt.UTC().Format(time.RFC3339Nano)})
			return
		}
		h.ServeHTTP(w, r)
	})
}
