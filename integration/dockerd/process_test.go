//go:build linux

package dockerd_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a child process that the harness started and must end, by
// its PID.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been reaped
	err    error         // Wait's result, set before exited is closed
}

// startProcess starts argv with its standard output and error appended to
// the file logPath. The process gets SIGKILL if the test process dies
// first (a timeout's panic), so that nothing outlives a crashed test.
//
// Linux sends that signal when the OS thread that started the child ends,
// not the process. The Go runtime ends a thread only when a goroutine
// locked to it returns; the harness does that once, in hostMissing, before
// it starts any process.
func startProcess(name, logPath string, env []string, argv ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// running reports whether the process has not exited yet.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends sig and waits up to grace for the process to exit, then kills
// it. It returns an error if the process had to be killed or had already
// exited on its own with a failure.
func (p *process) stop(sig syscall.Signal, grace time.Duration) error {
	if !p.running() {
		if p.err != nil {
			return fmt.Errorf("%s (pid %d) had exited: %w", p.name, p.pid(), p.err)
		}
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.exited:
		return nil
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s (pid %d) did not exit within %v of %v: killed", p.name, p.pid(), grace, sig)
	}
}

// killShims kills, by PID, every containerd shim left that serves the
// containerd at address, and the processes it runs (its children: a
// plugin's init), and returns their PIDs. Shims outlive containerd by
// design; after a clean dockerd shutdown there are none.
func killShims(address string) ([]int, error) {
	procs, err := listProcesses()
	if err != nil {
		return nil, err
	}
	var victims []int
	for pid, p := range procs {
		i := slices.Index(p.args, "-address")
		if i < 0 || i+1 >= len(p.args) || p.args[i+1] != address {
			continue
		}
		for child, c := range procs {
			if c.ppid == pid {
				victims = append(victims, child)
			}
		}
		victims = append(victims, pid)
	}
	var errs []error
	for _, pid := range victims {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing %d: %w", pid, err))
		}
	}
	return victims, errors.Join(errs...)
}

type procInfo struct {
	ppid int
	args []string
}

// listProcesses reads the parent and arguments of every process in /proc.
func listProcesses() (map[int]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	procs := map[int]procInfo{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err1 := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		stat, err2 := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err1 != nil || err2 != nil {
			continue // gone
		}
		// stat is "pid (comm) state ppid ...", and comm may hold spaces.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		procs[pid] = procInfo{ppid: ppid, args: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")}
	}
	return procs, nil
}
