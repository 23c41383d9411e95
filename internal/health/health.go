// Package health asks a managed plugin, over its own socket, whether it
// answers its protocol: the readiness and liveness probes of the swarm
// plugin controller (package plugin). It owns the probe (Probe, and
// Checker, which picks the Backend's own probe or the socket), Start's
// readiness wait (Readiness), Wait's count of misses in a row (Liveness)
// and the node's marks of plugins found hung (NotAnswering), which the
// next task's Start reads. The Controller's Start and Wait are its only
// callers.
//
// A plugin answers when the handshake every managed plugin serves,
// Plugin.Activate, succeeds, and then, for each interface type moby knows,
// one cheap call of that protocol gets any HTTP answer (an endpoint the
// plugin does not implement, a 404, still shows the plugin alive):
// VolumeDriver.Capabilities, NetworkDriver.GetCapabilities,
// IpamDriver.GetCapabilities, LogDriver.Capabilities. A CSI plugin
// (docker.csicontroller/1.0, docker.csinode/1.0) is asked CSI's
// Identity.Probe over gRPC instead, and answers when it reports ready (or
// does not implement Probe). Probe is safe for concurrent use.
package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/docker/docker/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// mimetype is the Content-Type and Accept of moby's plugin protocol
// (pkg/plugins/transport.VersionMimetype).
const mimetype = "application/vnd.docker.plugins.v1.2+json"

// ErrNoAddress is returned by Probe for a plugin with no socket address
// (not enabled, or a Backend that runs no process): it cannot be probed.
var ErrNoAddress = errors.New("plugin has no socket address")

// calls are the cheap call of each HTTP interface type moby knows.
var calls = map[string]string{
	"docker.volumedriver/1.0":  "VolumeDriver.Capabilities",
	"docker.networkdriver/1.0": "NetworkDriver.GetCapabilities",
	"docker.ipamdriver/1.0":    "IpamDriver.GetCapabilities",
	"docker.logdriver/1.0":     "LogDriver.Capabilities",
}

// Name returns what Probe asks a plugin of the interface types typs, for
// messages: "Plugin.Activate, VolumeDriver.Capabilities", say, or
// "csi.Identity/Probe".
func Name(typs []types.PluginInterfaceType) string {
	if isCSI(typs) {
		return "csi.Identity/Probe"
	}
	names := []string{"Plugin.Activate"}
	for _, t := range typs {
		if c, ok := calls[t.String()]; ok {
			names = append(names, c)
		}
	}
	return strings.Join(names, ", ")
}

func isCSI(typs []types.PluginInterfaceType) bool {
	for _, t := range typs {
		if s := t.String(); s == "docker.csicontroller/1.0" || s == "docker.csinode/1.0" {
			return true
		}
	}
	return false
}

// Probe asks the plugin listening on addr, a unix socket, whether it
// answers, for the interface types typs. It returns nil when the plugin
// answered, and otherwise an error that says which call failed and how.
// ctx bounds the whole probe.
func Probe(ctx context.Context, addr net.Addr, typs []types.PluginInterfaceType) error {
	if addr == nil || addr.String() == "" {
		return ErrNoAddress
	}
	if isCSI(typs) {
		return probeCSI(ctx, addr)
	}
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, addr.Network(), addr.String())
		},
		DisableKeepAlives: true,
	}}
	defer c.CloseIdleConnections()
	var activated struct{ Implements []string }
	if err := call(ctx, c, "Plugin.Activate", &activated, true); err != nil {
		return err
	}
	for _, t := range typs {
		if m, ok := calls[t.String()]; ok {
			if err := call(ctx, c, m, nil, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// call POSTs an empty request to method. With strict, only a 200 whose
// body decodes into ret is an answer; otherwise any HTTP response is.
func call(ctx context.Context, c *http.Client, method string, ret any, strict bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/"+method, bytes.NewReader([]byte("{}")))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mimetype)
	req.Header.Set("Accept", mimetype)
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", method, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: reading the answer: %w", method, err)
	}
	if !strict {
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: answered %s: %s", method, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, ret); err != nil {
		return fmt.Errorf("%s: answered with no valid JSON: %w", method, err)
	}
	return nil
}

// unwrapURL drops the *url.Error around a transport error, whose message
// repeats the made-up URL.
func unwrapURL(err error) error {
	var u interface{ Unwrap() error }
	if errors.As(err, &u) && strings.HasPrefix(err.Error(), "Post ") {
		if inner := u.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

func probeCSI(ctx context.Context, addr net.Addr) error {
	conn, err := grpc.NewClient("passthrough:///plugin",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, addr.Network(), addr.String())
		}))
	if err != nil {
		return fmt.Errorf("csi.Identity/Probe: %w", err)
	}
	defer conn.Close()
	resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	switch {
	case status.Code(err) == codes.Unimplemented:
		return nil // alive, and Probe is optional in CSI
	case err != nil:
		return fmt.Errorf("csi.Identity/Probe: %w", err)
	case resp.GetReady() != nil && !resp.GetReady().GetValue():
		return errors.New("csi.Identity/Probe: not ready")
	}
	return nil
}

// NotAnswering records the plugins, by ID, that a task's Wait found not
// answering, so that the next task's Start restarts such a plugin (if it
// still does not answer) and no other. Safe for concurrent use.
var NotAnswering = &Marks{ids: make(map[string]struct{})}

// Marks is a set of plugin IDs.
type Marks struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// Mark adds id.
func (m *Marks) Mark(id string) {
	m.mu.Lock()
	m.ids[id] = struct{}{}
	m.mu.Unlock()
}

// Take reports whether id was marked, and clears the mark.
func (m *Marks) Take(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.ids[id]
	delete(m.ids, id)
	return ok
}
