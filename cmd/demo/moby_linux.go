package main

import (
	"context"
	"fmt"
	"sync"

	"github.com/seed-e85c93d5/plugin"
	"github.com/seed-e85c93d5/plugin/internal/realmanager"
)

// mobyKit gives every node a real moby plugin.Manager (with a fake plugin
// executor) that pulls from an in-process registry, to which it publishes a
// small volume-driver plugin declaring DEBUG=0.
func mobyKit(ctx context.Context) (_ *kit, retErr error) {
	if err := realmanager.Supported(); err != nil {
		return nil, fmt.Errorf("the moby backend cannot run here: %w", err)
	}
	reg, err := realmanager.StartRegistry()
	if err != nil {
		return nil, fmt.Errorf("moby backend: starting the registry: %w", err)
	}
	defer func() {
		if retErr != nil {
			reg.Close()
		}
	}()
	v1, _, _ := realmanager.StandardPlugins()
	if err := realmanager.Publish(ctx, reg.Host(), v1); err != nil {
		return nil, fmt.Errorf("moby backend: publishing %s: %w", v1.Ref(reg.Host()), err)
	}
	var (
		mu       sync.Mutex
		managers []*realmanager.Manager
	)
	return &kit{
		name:   "moby",
		remote: v1.Ref(reg.Host()),
		newBackend: func(string) (plugin.Backend, error) {
			m, err := realmanager.NewManager()
			if err != nil {
				return nil, err
			}
			mu.Lock()
			managers = append(managers, m)
			mu.Unlock()
			return m, nil
		},
		close: func() {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range managers {
				m.Close()
			}
			reg.Close()
		},
	}, nil
}
