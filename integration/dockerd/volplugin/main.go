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
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	socketPath = "/run/docker/plugins/p.sock"
	dataDir    = "/data"
	tagFile    = "/tag"
)

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
	d := &driver{status: map[string]any{
		"tag":     strings.TrimSpace(string(tag)),
		"version": os.Getenv("VERSION"),
		"started": time.Now().UTC().Format(time.RFC3339Nano),
	}}
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
	srv := &http.Server{Handler: d.mux()}
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
