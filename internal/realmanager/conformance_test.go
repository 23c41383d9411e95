// Not under -race: see realmanager_test.go.

//go:build linux && !race

package realmanager

import (
	"context"
	"testing"

	"github.com/seed-e85c93d5/plugin/internal/backendtest"
	"gotest.tools/v3/assert"
)

// TestConformance runs the backendtest suite against the real Manager: one
// registry with the standard plugins for the whole suite, a fresh Manager
// for each scenario.
func TestConformance(t *testing.T) {
	f := newFixture(t)
	missing := f.reg.Host() + "/realmanager/missing:v1"

	// The suite's Env needs the privileges as the Manager computes them.
	probe := newManager(t)
	privs, err := probe.RequiredPrivileges(context.Background(), f.priv)
	assert.NilError(t, err)
	assert.Assert(t, len(privs) > 0, "the privileged plugin requires nothing: is the registry up?")

	backendtest.Run(t, func(t *testing.T) backendtest.Env {
		return backendtest.Env{
			Backend:        newManager(t),
			V1:             f.v1,
			V2:             f.v2,
			Priv:           f.priv,
			PrivPrivileges: privs,
			Missing:        missing,
			SettableEnv:    "DEBUG", // see StandardPlugins
			FixedEnv:       "MODE",
		}
	})
}
