package executor_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The Example runs a one-node swarm. swarmkit v2.0.0's manager.Stop
		// never stops the CSI volume manager, so each stopped manager leaks
		// exactly these two goroutines (../shared/NOTES.md); nothing else
		// is ignored.
		goleak.IgnoreTopFunction("github.com/moby/swarmkit/v2/manager/csi.(*Manager).run"),
		goleak.IgnoreTopFunction("github.com/moby/swarmkit/v2/volumequeue.(*VolumeQueue).Wait"),
	)
}
