package health

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	v2 "github.com/docker/docker/plugin/v2"
	"github.com/moby/swarmkit/v2/agent/exec"

	"github.com/seed-e85c93d5/plugin/internal/errs"
	"github.com/seed-e85c93d5/plugin/internal/logging"
)

// ErrNotProbed is a Checker's answer for a plugin it cannot ask: no
// socket address and no Prober. The Controller then trusts the plugin,
// as upstream trusts every plugin.
var ErrNotProbed = errors.New("plugin cannot be probed")

// Checker is how one Controller probes its plugin, for Start's readiness
// and Wait's liveness checks. It is a value: safe for concurrent use.
type Checker struct {
	// Prober, when set, is the Backend's own probe (the controller's
	// optional PluginProber, as the plugintest fake has): it is asked
	// instead of the plugin's socket.
	Prober func(ctx context.Context, id string) error
	// Timeout bounds each probe.
	Timeout time.Duration
	// Closed, when closed, ends a probe in flight (the Controller's Close).
	Closed <-chan struct{}
}

// Probe asks the enabled plugin pl whether it answers, within Timeout:
// through Prober, or over the socket the Manager gave it (Probe). It
// returns ErrNotProbed for a plugin it cannot ask.
func (c Checker) Probe(ctx context.Context, pl *v2.Plugin) error {
	if !c.CanProbe(pl) {
		return ErrNotProbed
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() { // Closed ends a probe in flight too
		select {
		case <-c.Closed:
			cancel()
		case <-done:
		}
	}()
	if c.Prober != nil {
		return c.Prober(ctx, pl.GetID())
	}
	addr := pl.Addr()
	if addr == nil {
		return ErrNotProbed
	}
	err := Probe(ctx, addr, pl.GetTypes())
	if errors.Is(err, ErrNoAddress) {
		return ErrNotProbed
	}
	return err
}

// CanProbe reports whether Probe can ask pl at all: through Prober, or
// over a socket address.
func (c Checker) CanProbe(pl *v2.Plugin) bool {
	return c.Prober != nil || pl.Addr() != nil
}

// Name says what Probe asks pl, for messages.
func (c Checker) Name(pl *v2.Plugin) string {
	if c.Prober != nil {
		return "the Backend's probe"
	}
	return Name(pl.GetTypes())
}

// Readiness is Start's wait for one Controller's enabled plugin to
// answer. It is safe for concurrent use.
type Readiness struct {
	mu    sync.Mutex
	since time.Time // when Check first found the plugin not answering; zero once it answered
}

// Check probes pl once with c and returns nil once it answers (or cannot
// be probed), a temporary errs.NotAnswering while it may still be
// starting, and a permanent one once timeout has passed since Check first
// found it not answering. name is the plugin's name for the messages.
func (r *Readiness) Check(ctx context.Context, c Checker, pl *v2.Plugin, name string, timeout time.Duration) error {
	err := c.Probe(ctx, pl)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil || errors.Is(err, ErrNotProbed) {
		r.since = time.Time{}
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	now := time.Now()
	if r.since.IsZero() {
		r.since = now
	}
	if now.Sub(r.since) >= timeout {
		return errs.Detail(errs.NotAnswering, fmt.Sprintf("%s did not answer %s within the enable timeout (%s); last answer: %v", name, c.Name(pl), timeout, err), nil)
	}
	return exec.MakeTemporary(errs.Detail(errs.NotAnswering, fmt.Sprintf("waiting for %s to answer %s: %v", name, c.Name(pl), err), nil))
}

// Liveness is one Wait's health check of its running plugin: it counts
// the misses in a row. It is not safe for concurrent use; each Wait has
// its own.
type Liveness struct {
	Checker   Checker
	Threshold int    // misses in a row that fail the task
	Name      string // the plugin's name, for the messages
	Log       logging.Logf
	misses    int
}

// Check probes pl once. A miss below the threshold is logged at warn and
// returns nil; the miss that reaches it marks pl NotAnswering (so the next
// task's Start restarts it if it still does not answer), is logged at
// error, and returns a permanent errs.NotAnswering that names the probe.
// It returns ctx's error when ctx ends during the probe.
func (l *Liveness) Check(ctx context.Context, pl *v2.Plugin) error {
	err := l.Checker.Probe(ctx, pl)
	switch {
	case err == nil || errors.Is(err, ErrNotProbed):
		l.misses = 0
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	l.misses++
	probe, misses := l.Checker.Name(pl), strconv.Itoa(l.misses)
	if l.misses < l.Threshold {
		l.Log(ctx, log.WarnLevel, "plugin did not answer its health check", "probe", probe, "misses", misses, "error", err.Error())
		return nil
	}
	NotAnswering.Mark(pl.GetID())
	l.Log(ctx, log.ErrorLevel, "plugin does not answer: failing the task; the next task restarts the plugin", "probe", probe, "misses", misses, "error", err.Error())
	return errs.Detail(errs.NotAnswering, fmt.Sprintf("%s missed %d health checks in a row (%s); last answer: %v", l.Name, l.misses, probe, err), nil)
}
