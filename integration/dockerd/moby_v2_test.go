//go:build linux

package dockerd_test

// mobyV2 is moby v2 (github.com/moby/moby/v2) v2.0.0-beta.24, the release
// mobyv2/ replaces the controller of: its module source builds as it is
// (go.mod, no vendor/), with -mod=mod for the fork's extra requirement on
// github.com/seed-e85c93d5/plugin/mobyv2 (replaced by mobyv2/). The
// scenarios drive it with docker/docker v28.3.0's client, which negotiates
// the API version (v2 serves 1.56, the client speaks 1.51).
//
// Its plugins need runc 1.2 or later: with Debian 12's runc 1.1.5, every
// plugin enable fails with `runc create failed: namespace {"time" ""} does
// not exist` (runc_test.go obtains one). What stock does is declared in
// the scenarios' stockV2 field, as measured here.
var mobyV2 = &mobyRelease{
	name:     "v2",
	title:    "moby v2 v2.0.0-beta.24",
	module:   "github.com/moby/moby/v2",
	version:  "v2.0.0-beta.24",
	upstream: "github.com/moby/moby/v2/daemon/cluster/controllers/plugin",
	ours:     ourModule + "/mobyv2",
	oursDir:  "mobyv2",
	patch:    "daemon-mobyv2-v2.0.0-beta.24.patch",
	runc12:   true,
	declared: func(sc *scenario) *outcome { return sc.stockV2 },
}
