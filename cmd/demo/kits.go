package main

import (
	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/plugintest"
)

// fakeRemote is the plugin the fake backend serves.
const fakeRemote = "example.com/demo/vol:1"

// fakeKit gives every node a plugintest.Backend that serves fakeRemote with
// one settable variable, DEBUG=0.
func fakeKit() *kit {
	return &kit{
		name:   "fake",
		remote: fakeRemote,
		newBackend: func(string) (plugin.Backend, error) {
			b := plugintest.NewBackend()
			b.AddRemote(fakeRemote, plugintest.Remote{Env: []string{"DEBUG=0"}})
			return b, nil
		},
		close: func() {},
	}
}
