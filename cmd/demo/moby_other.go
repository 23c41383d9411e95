//go:build !linux

package main

import (
	"context"
	"errors"
)

func mobyKit(context.Context) (*kit, error) {
	return nil, errors.New("the moby backend cannot run here: moby's plugin manager needs linux")
}
