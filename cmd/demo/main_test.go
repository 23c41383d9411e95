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
		"Starting an in-process swarm: 1 manager + 1 worker, plugin backend \"fake\" ...\n",
		": 2 nodes.\n",
		"new task RUNNING on 2/2 nodes; plugin enabled, DEBUG=1 everywhere\n",
		"plugin enabled, DEBUG=1 everywhere",
		"plugin enabled, DEBUG=2 everywhere",
		"  worker-1 stopped: plugin ",
		"worker-1 back: same task ",
		" kept, enabled throughout, 0 pulls\n",
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

// TestDemoOneNode runs the demo on a swarm of one: every count says
// "1 node", never "1 nodes".
func TestDemoOneNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"-workers=0"}, &stdout, &stderr)
	out := stdout.String()
	assert.Equal(t, code, 0, stderr.String())
	for _, want := range []string{
		"Starting an in-process swarm: 1 manager + 0 workers, plugin backend \"fake\" ...\n",
		": 1 node.\n",
		"manager back: same task ",
		"new task RUNNING on 1/1 node; plugin disabled, DEBUG=2 everywhere\n",
		"plugin removed from 1/1 node\n",
	} {
		assert.Check(t, is.Contains(out, want))
	}
	assert.Check(t, !strings.Contains(out, "1 nodes"), out)
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

// TestUsage checks that bad usage says what is wrong, one line each, then
// shows the usage and exits 2.
func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		want string // the lines before the usage
	}{
		{[]string{"-workers", "-1"}, "demo: -workers must be 0 or more, got -1\n"},
		{[]string{"-backend", "foo"}, "demo: -backend must be fake or moby, got \"foo\"\n"},
		{[]string{"extra"}, "demo: unexpected argument \"extra\": the demo takes flags only\n"},
		{[]string{"-v", "a", "-b"}, "demo: unexpected arguments \"a\" \"-b\": the demo takes flags only\n"},
		{[]string{"-workers=-2", "-backend=", "x"}, "demo: -workers must be 0 or more, got -2\n" +
			"demo: -backend must be fake or moby, got \"\"\n" +
			"demo: unexpected argument \"x\": the demo takes flags only\n"},
		{[]string{"-workers=x"}, "demo: invalid value \"x\" for flag -workers: parse error\n"},
		{[]string{"-nope"}, "demo: flag provided but not defined: -nope\n"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		assert.Check(t, is.Equal(code, 2), "%v", tc.args)
		assert.Check(t, is.Equal(stderr.String(), tc.want+usageText), "%v", tc.args)
		assert.Check(t, is.Equal(stdout.String(), ""), "%v", tc.args)
	}
}

const usageText = `usage: demo [-workers N] [-backend fake|moby] [-v]
  -backend string
    	plugin backend of every node: fake (in-memory, runs anywhere) or moby (moby's real plugin.Manager; needs root) (default "fake")
  -v	show swarmkit's logs on stderr
  -workers number
    	number of worker nodes besides the manager (default 2)
`

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-h"}, &stdout, &stderr)
	assert.Check(t, is.Equal(code, 0))
	assert.Check(t, is.Equal(stderr.String(), usageText))
	assert.Check(t, is.Equal(stdout.String(), ""))
}

func TestCount(t *testing.T) {
	assert.Check(t, is.Equal(count(0, "worker"), "0 workers"))
	assert.Check(t, is.Equal(count(1, "node"), "1 node"))
	assert.Check(t, is.Equal(count(2, "node"), "2 nodes"))
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
