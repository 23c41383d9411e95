//go:build linux

package dockerd_test

import (
	"os"
	"path/filepath"
)

// mobyV28 is docker/docker v28.3.0, the release this repository's root
// module replaces the controller of. Its module has no go.mod: vendor.mod
// and vendor.sum are its go.mod and go.sum, and vendor/ is left out
// (NOTES.md, "A forked dockerd on this machine"). Its dockerd runs with the
// host's runc (Debian 12's 1.1.5). The scenarios declare what stock does in
// their stock field, from the issue they come from.
var mobyV28 = &mobyRelease{
	name:     "v28",
	title:    "docker/docker v28.3.0",
	module:   "github.com/docker/docker",
	version:  "v28.3.0+incompatible",
	upstream: "github.com/docker/docker/daemon/cluster/controllers/plugin",
	ours:     ourModule,
	oursDir:  ".",
	patch:    "daemon-v28.3.0.patch",
	skip:     "vendor",
	prepare: func(src string) error {
		for _, name := range []string{"mod", "sum"} {
			if err := os.Rename(filepath.Join(src, "vendor."+name), filepath.Join(src, "go."+name)); err != nil {
				return err
			}
		}
		return nil
	},
	declared: func(sc *scenario) *outcome { return sc.stock },
}
