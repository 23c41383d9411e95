package refs

import (
	"context"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A held lock makes a second Lock wait until Unlock, or until its context
// ends; the table forgets a key no one holds or waits for, and taking and
// releasing a free lock allocates nothing once warm.
func TestLockTable(t *testing.T) {
	tab := &LockTable{locks: make(map[string]*keyedLock)}
	h, err := tab.Lock(context.Background(), "vol:latest")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tab.Lock(ctx, "vol:latest"); err != context.Canceled {
		t.Fatalf("Lock of a held lock with a done context: %v, want context.Canceled", err)
	}
	got := make(chan struct{})
	go func() {
		h2, err := tab.Lock(context.Background(), "vol:latest")
		if err == nil {
			h2.Unlock()
		}
		close(got)
	}()
	if h3, err := tab.Lock(ctx, "other:latest"); err != nil {
		t.Fatalf("another key's free lock, even with a done context: %v", err)
	} else {
		h3.Unlock()
	}
	h.Unlock()
	<-got
	tab.mu.Lock()
	n := len(tab.locks)
	tab.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d keys left in the table, want 0", n)
	}
	Held{}.Unlock() // the zero Held holds nothing
	if a := testing.AllocsPerRun(100, func() {
		h, _ := tab.Lock(context.Background(), "vol:latest")
		h.Unlock()
	}); a != 0 && !raceEnabled {
		t.Errorf("a free lock taken and released allocates %v times", a)
	}
}
