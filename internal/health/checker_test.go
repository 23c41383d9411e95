package health

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/docker/docker/api/types"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/seed-e85c93d5/plugin/internal/errs"
)

// answers is a Prober whose plugin fails while *down is set.
func answers(down *bool) func(context.Context, string) error {
	return func(context.Context, string) error {
		if *down {
			return errors.New("connection refused")
		}
		return nil
	}
}

func testPlugin(id string) *v2.Plugin {
	return &v2.Plugin{PluginObj: types.Plugin{ID: id}}
}

// Readiness: temporary while the plugin may still be starting, permanent
// once the timeout has passed since the first miss, and the count starts
// again after an answer.
func TestReadiness(t *testing.T) {
	ctx := context.Background()
	down := true
	c := Checker{Prober: answers(&down), Timeout: time.Second}
	pl := testPlugin("p1")
	var r Readiness

	err := r.Check(ctx, c, pl, "vol", time.Hour)
	assert.Check(t, is.ErrorIs(err, errs.NotAnswering))
	assert.Check(t, exec.IsTemporary(err), "%v", err)
	assert.Check(t, is.ErrorContains(err, "waiting for vol to answer the Backend's probe: connection refused"))

	down = false
	assert.Check(t, r.Check(ctx, c, pl, "vol", time.Hour))

	down = true
	err = r.Check(ctx, c, pl, "vol", 0)
	assert.Check(t, is.ErrorIs(err, errs.NotAnswering))
	assert.Check(t, !exec.IsTemporary(err), "after the timeout: %v", err)
	assert.Check(t, is.ErrorContains(err, "did not answer the Backend's probe within the enable timeout"))
}

// A plugin that cannot be probed (no socket, no Prober) is trusted.
func TestNotProbedIsTrusted(t *testing.T) {
	var r Readiness
	pl := testPlugin("p2")
	assert.Check(t, is.ErrorIs(Checker{Timeout: time.Second}.Probe(context.Background(), pl), ErrNotProbed))
	assert.Check(t, r.Check(context.Background(), Checker{Timeout: time.Second}, pl, "vol", 0))
	l := Liveness{Checker: Checker{Timeout: time.Second}, Threshold: 1, Log: func(context.Context, log.Level, string, ...string) { t.Error("logged") }}
	assert.Check(t, l.Check(context.Background(), pl))
}

// Liveness: misses below the threshold are logged at warn; an answer
// starts the count again; the miss that reaches the threshold is logged at
// error, marks the plugin NotAnswering and fails with a permanent error
// that names the probe.
func TestLiveness(t *testing.T) {
	ctx := context.Background()
	down := true
	pl := testPlugin("p3")
	var levels []log.Level
	l := Liveness{Checker: Checker{Prober: answers(&down), Timeout: time.Second}, Threshold: 2, Name: "vol",
		Log: func(_ context.Context, level log.Level, _ string, _ ...string) { levels = append(levels, level) }}

	assert.Check(t, l.Check(ctx, pl))
	down = false
	assert.Check(t, l.Check(ctx, pl))
	down = true
	assert.Check(t, l.Check(ctx, pl))
	assert.Check(t, !NotAnswering.Take(pl.GetID()), "marked before the threshold")
	err := l.Check(ctx, pl)
	assert.Check(t, is.ErrorIs(err, errs.NotAnswering))
	assert.Check(t, !exec.IsTemporary(err))
	assert.Check(t, is.ErrorContains(err, "vol missed 2 health checks in a row (the Backend's probe)"))
	assert.Check(t, NotAnswering.Take(pl.GetID()), "marked at the threshold")
	assert.Check(t, is.DeepEqual(levels, []log.Level{log.WarnLevel, log.WarnLevel, log.ErrorLevel}))
}

// A Checker's Closed ends a probe in flight.
func TestCheckerClosedEndsAProbe(t *testing.T) {
	closed := make(chan struct{})
	c := Checker{Timeout: time.Hour, Closed: closed, Prober: func(ctx context.Context, _ string) error {
		close(closed)
		<-ctx.Done()
		return ctx.Err()
	}}
	assert.Check(t, is.ErrorIs(c.Probe(context.Background(), testPlugin("p4")), context.Canceled))
}
