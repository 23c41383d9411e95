//go:build unix

package bench

import (
	"context"
	"errors"
	"runtime/debug"
	"syscall"
	"testing"
	"time"
)

// idleWindow is how long the waiters sit idle in each iteration of
// BenchmarkIdleWaiters. The benchmark measures idleness, so it waits on a
// timer, but it asserts nothing about time: the CPU used is reported.
const idleWindow = 250 * time.Millisecond

// cpuTime is the CPU time (user + system) the process has used so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idle starts the group's waiters (all subscribed, past their state
// check), lets them sit for window and returns the process CPU time used
// and the wall time elapsed meanwhile; then it cancels them and checks
// that none had returned before and that all return context.Canceled.
// A nil group measures the process with no waiter, as a baseline.
// Timer calls around the window are made by the caller through
// startTimer/stopTimer, so setup and teardown stay untimed.
func idle(tb testing.TB, g *group, window time.Duration, startTimer, stopTimer func()) (cpu, wall time.Duration) {
	tb.Helper()
	gctx, cancelGuard := guard()
	defer cancelGuard()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var r *running
	if g != nil {
		var err error
		if r, err = g.start(gctx, ctx); err != nil {
			cancel()
			_ = r.collect(func(error) bool { return true }, "")
			tb.Fatal(err)
		}
	}
	// Collect the setup's garbage and return the freed memory to the OS
	// now, so that neither the collector nor the scavenger works in the
	// window: what is left is the waiters' own cost and the runtime's floor.
	debug.FreeOSMemory()

	startTimer()
	c0, t0 := cpuTime(tb), time.Now()
	time.Sleep(window)
	c1, t1 := cpuTime(tb), time.Now()
	stopTimer()

	if r != nil {
		early := len(r.results)
		cancel()
		if err := r.collect(func(err error) bool { return errors.Is(err, context.Canceled) }, "context.Canceled"); err != nil {
			tb.Fatal(err)
		}
		if early > 0 {
			tb.Fatalf("%d Waits returned while idle", early)
		}
	}
	return c1 - c0, t1.Sub(t0)
}

// BenchmarkIdleWaiters measures the CPU the process uses while waiters
// Waits sit on one plugin with nothing happening, as cpu-ns/s-idle: CPU
// nanoseconds (user + system, getrusage) per wall second. impl=none is the
// same process with no waiter: the runtime's own floor. ns/op is the
// window's length and means nothing.
func BenchmarkIdleWaiters(b *testing.B) {
	variants := []struct {
		name string
		im   *impl
		none bool
	}{
		{name: "none", none: true},
		{name: upstreamImpl.name, im: &upstreamImpl},
		{name: oursImpl.name, im: &oursImpl},
	}
	for _, v := range variants {
		b.Run("impl="+v.name, func(b *testing.B) {
			b.ReportAllocs()
			var cpu, wall time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				var g *group
				if !v.none {
					g = newGroup(b, v.im, waiters)
				}
				c, w := idle(b, g, idleWindow, b.StartTimer, b.StopTimer)
				cpu += c
				wall += w
				if g != nil {
					g.close(b)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/wall.Seconds(), "cpu-ns/s-idle")
		})
	}
}

// TestIdleWaiters runs the idle measurement briefly on a few waiters, to
// check that it starts, holds and releases them; it asserts nothing about
// the CPU used.
func TestIdleWaiters(t *testing.T) {
	nop := func() {}
	for _, im := range controllerImpls {
		t.Run(im.name, func(t *testing.T) {
			g := newGroup(t, &im, 20)
			idle(t, g, time.Millisecond, nop, nop)
			g.close(t)
		})
	}
}
