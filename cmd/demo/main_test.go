package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// swarmkit v2.0.0's manager.Stop never stops the CSI volume manager
		// it starts: every manager leaves exactly these two goroutines
		// blocked in a select of that very function.
		goleak.IgnoreTopFunction("github.com/moby/swarmkit/v2/manager/csi.(*Manager).run"),
		goleak.IgnoreTopFunction("github.com/moby/swarmkit/v2/volumequeue.(*VolumeQueue).Wait"),
	)
}

// TestDemo runs the whole demo with the fake backend and one worker.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"-workers=1"}, &stdout, &stderr)
	out := stdout.String()
	t.Log(out)
	assert.Equal(t, code, 0, stderr.String())
	assert.Check(t, is.Equal(stderr.String(), ""))
	for _, want := range []string{
		"1 manager + 1 worker(s)",
		"plugin enabled, DEBUG=1 everywhere",
		"plugin enabled, DEBUG=2 everywhere",
		"plugin disabled, DEBUG=2 everywhere",
		"plugin removed from 2/2 nodes",
		"== Summary",
		"Final state: plugin vol removed from every node.",
		"Swarm stopped in",
	} {
		assert.Check(t, is.Contains(out, want))
	}
	// Rows of both nodes with a RUNNING task and the plugin enabled.
	for _, node := range []string{"manager", "worker-1"} {
		assert.Check(t, hasRow(out, node, "RUNNING  RUNNING", "enabled"), node)
		assert.Check(t, hasRow(out, node, "absent"), node)
	}
}

// hasRow reports whether a table row of node contains every part.
func hasRow(out, node string, parts ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != node {
			continue
		}
		all := true
		for _, p := range parts {
			all = all && strings.Contains(strings.Join(fields, "  "), p)
		}
		if all {
			return true
		}
	}
	return false
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"-backend=bogus"}, {"-workers=-1"}, {"-workers=x"}, {"extra"}} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, &stdout, &stderr)
		assert.Check(t, is.Equal(code, 2), "%v", args)
		assert.Check(t, is.Contains(stderr.String(), "usage"), "%v", args)
		assert.Check(t, is.Equal(stdout.String(), ""), "%v", args)
	}
}

// TestInterrupted cancels the demo's context, as SIGINT does, once the swarm
// is up: the demo stops the swarm and returns 130.
func TestInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &cancelOn{trigger: "== 1.", cancel: cancel}
	var stderr bytes.Buffer
	code := run(ctx, []string{"-workers=1"}, w, &stderr)
	assert.Check(t, is.Equal(code, 130))
	assert.Check(t, is.Contains(stderr.String(), "interrupted"))
	assert.Check(t, is.Contains(w.buf.String(), "Swarm stopped in"))
}

// cancelOn is a writer that cancels once its output contains trigger.
type cancelOn struct {
	buf     bytes.Buffer
	trigger string
	cancel  func()
}

func (w *cancelOn) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.trigger) {
		w.cancel()
	}
	return n, err
}
