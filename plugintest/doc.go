// Package plugintest provides an in-memory fake of moby's plugin manager
// (*plugin.Manager of github.com/docker/docker v28.3.0) for unit tests of
// code that drives a plugin Backend, such as the swarm plugin controller, in
// the spirit of net/http/httptest.
//
//	b := plugintest.NewBackend()
//	b.AddRemote("vieux/sshfs", plugintest.Remote{Env: []string{"DEBUG=0"}})
//	task := plugintest.NewTask("task-1", "svc-1", runtime.PluginSpec{Remote: "vieux/sshfs"})
//	task.DesiredState = api.TaskStateRunning // NewTask leaves it NEW
//	c, _ := plugin.NewController(b, task)
//	err := plugintest.Drive(ctx, task, c, api.TaskStateRunning) // exec.Do, step by step
//	s, _ := b.Snapshot("vieux/sshfs") // s.Enabled, s.Refs, s.SwarmServiceID, ...
//
// A Backend implements the controller's Backend interface (Pull, Upgrade,
// Get, Enable, Disable, Remove, SubscribeEvents) and its optional Setter
// (Set) and Privileger (Privileges). Test helpers register remotes (AddRemote, MissingRemote), inject
// failures (FailNext), record calls (Calls), wait for subscriptions
// (WaitSubscribers, Subscribers) and take race-free snapshots (Snapshot:
// the plugin's API object, its owning service and its reference count;
// Plugin without the owner) and choose the daemon's privilege comparison
// (SetPrivilegeRule); NewTask builds a plugin task the way the
// daemon encodes it. Every method is safe for concurrent use.
//
// Drive takes a task through swarmkit's exec.Do the way the agent does,
// step by step, assigning each status back to the task; ExampleDrive shows
// a whole life: started, its Wait cancelled, shut down, removed.
//
// # Quiet logs
//
// A Controller logs at info level when it pulls, enables and removes a
// plugin, through the logger of each call's context, which in a test is
// logrus' standard logger (stderr): those lines show under go test -v.
// Give the controller a logger of the test's own with plugin.WithLogger
// (through an Executor: executor.WithControllerOptions(plugin.WithLogger(
// ...))). logrus' hooks/test package makes one that writes nowhere and
// keeps every entry, so a test can silence the lines and still check them
// (the quietLogs example runs this):
//
//	logger, hook := logrustest.NewNullLogger() // github.com/sirupsen/logrus/hooks/test
//	c, err := plugin.New(b, task, plugin.WithLogger(logrus.NewEntry(logger)))
//	// ... drive the task ...
//	hook.AllEntries() // "plugin pulled", "plugin enabled", with their fields
//
// To only silence them, the logger can be any *logrus.Logger whose output
// is io.Discard; logger.SetLevel(logrus.DebugLevel) keeps the debug lines
// of every step too. WithLogger covers the controller's lines only: exec.Do
// logs through swarmkit's log.G(ctx) (a fatal step, say).
//
// # What it mirrors
//
// The rules a caller can observe, read from moby's plugin/backend_linux.go,
// manager.go, manager_linux.go, store.go, events.go and errors.go:
//
//   - Lookups go through moby's own plugin.Store, so Get resolves a full ID,
//     a name ("vol" finds "vol:latest") or a unique ID prefix exactly like
//     the Manager; an unknown plugin, an invalid or canonical reference and
//     "" fail NotFound (`plugin "x" not found`; Get("") does not report
//     "invalid reference format": the store turns every parse error into
//     not found), an ambiguous prefix fails InvalidParameter ("multiple
//     plugins found for ..."). Get returns the same *v2.Plugin on every
//     call, so its Acquire, Release and GetRefCount are the shared
//     reference count; like moby's, it has no lower bound.
//   - Pull normalises the name (reference.FamiliarString of TagNameOnly),
//     refuses an existing one ("plugin vol:latest already exists", a
//     Conflict wrapped in InvalidParameter, so both cerrdefs.IsConflict and
//     cerrdefs.IsInvalidArgument hold, as for moby), checks the granted
//     privileges, builds the plugin as moby's createPlugin does (random
//     64-hex ID, InitEmptySettings, then every CreateOpt, then
//     PluginReference = ref.String()) and publishes EventCreate.
//   - Privileges: what a remote requires is computed from its config, as
//     moby's computePrivileges does (the same code the controller uses),
//     and Privileges tells it without installing anything, as the
//     Manager's does, empty answer on a failed fetch included. Pull and
//     Upgrade compare the grant with it like the Manager's
//     validatePrivileges, quirks included: equal length, both sorted by
//     name, then compared by name and value. docker v28's loop skips
//     index 0, so a wrong single privilege passes (CVE-2026-33997),
//     compares values in the order given (except those of elements the
//     sort swapped) and tells nil from empty; moby v2's compares every
//     index, values sorted, nil equal to empty. A mismatch fails with
//     "incorrect privileges", unclassified, as in moby. Each flavour
//     plays its own daemon's rule by default; SetPrivilegeRule picks the
//     other, so that a test can show that code stays safe on a docker v28
//     daemon (PrivilegesDockerV28) or model a fixed one
//     (PrivilegesMobyV2).
//   - Upgrade refuses an enabled plugin ("plugin must be disabled before
//     upgrading", Conflict), keeps the ID, the reference count and the
//     settings, replaces the config and PluginReference, publishes nothing.
//     As in moby, a full ID as name fails InvalidParameter (it is not a
//     valid reference).
//   - Enable of an enabled plugin fails Conflict ("plugin already enabled:
//     plugin X is enabled"); Disable of a disabled one fails Conflict
//     ("plugin is already disabled: plugin X found but disabled"). A
//     non-forced Disable refuses a reference count above 0 ("plugin X is in
//     use", Conflict), checked first. A non-forced Remove refuses a plugin
//     in use or enabled (Conflict); a forced one disables it without
//     publishing EventDisable and publishes EventRemove.
//   - Set calls v2.Plugin.Set, moby's own code.
//   - Events: EventCreate, EventEnable, EventDisable and EventRemove carry
//     the plugin object; SubscribeEvents filters them with a
//     re-implementation of moby's unexported matching (type and plugin ID,
//     or for EventCreate the Interfaces; a nil watch list gets everything,
//     an empty non-nil one nothing) and delivers them through
//     github.com/moby/pubsub configured as the Manager configures it
//     (NewPublisher(0, 0)): sends never wait, so an event that finds a
//     subscriber's buffer full is dropped for that subscriber, and a slow
//     subscriber can neither block nor deadlock the Backend. cancel evicts
//     and closes the channel; calling it again does nothing.
//
// # Race design
//
// v2.Plugin guards its fields with an unexported mu sync.RWMutex that its
// accessors (IsEnabled, GetID, GetRefCount, Set, ...) take, but moby's
// Store.SetState writes PluginObj.Enabled under the store's lock instead, a
// data race inside moby: a fake that did the same would make every
// controller test that reads IsEnabled while the state changes fail under
// -race for the fake's sake. There is no exported setter that takes mu, and
// Get must return the same *v2.Plugin (the reference count lives in it), so
// the plugin cannot be replaced by a fresh copy either.
//
// This package therefore takes the plugin's own lock: at init it finds the
// offset of the mu field with reflect (and panics if moby renamed or
// retyped it), and every write it makes to a plugin that has been published
// in the store (Enabled, Config, PluginReference and the digests) happens
// under that lock, reached through unsafe.Add. Reads by the code under test
// through the locking accessors are thus ordered with the fake's writes.
// Reading PluginObj fields directly (or copying PluginObj) while the state
// may change is still reported by -race, as it should be: it races with the
// real Manager too. Events, Snapshot and Plugin hand out deep copies made
// under the lock. State changes are also serialised by a Backend mutex, and events
// are published while it is held, so subscribers see them in state order.
// The lock order is Backend mutex, then plugin lock; the fake never calls
// out to user code (other than CreateOpts on a plugin nobody else can see
// yet) while holding either.
//
// # Differences from the real Manager
//
//   - Nothing is downloaded, unpacked, started or stopped: Enable flips the
//     state at once (no executor, no 500 ms wait, no restart on exit, no
//     authz middleware), Pull and Upgrade consult the remotes registered
//     with AddRemote, and outStream, metaHeaders and authConfig are only
//     recorded (Call.Out, Call.MetaHeaders, Call.Auth); nothing is written
//     to outStream. A remote nobody registered can be pulled and installs an
//     empty config that needs no privileges; the real registry would
//     answer not found. The config holds only Env and the fields the
//     privileges derive from, with made-up mount and device names; the
//     digests are synthetic.
//   - A MissingRemote fails NotFound ("error resolving plugin reference:
//     REF: not found"). The real Manager's error for a missing reference
//     depends on the registry hosts it tries (an https attempt against a
//     plain-http registry can hide the 404), so do not rely on its class.
//   - Each operation is atomic; moby checks and acts in separate steps, so
//     concurrent calls can interleave there in ways they cannot here.
//   - The privilege comparison sorts copies; moby sorts the caller's slices
//     in place.
//   - Pull and Upgrade fail at once if ctx is done; the real ones fail
//     while fetching.
//   - A remote's config declares only the env of Remote.Env (settable
//     "value") and Remote.FixedEnv (not settable); a real config.json may
//     also declare settable mounts, devices and args, which Set could then
//     change.
//   - A nil config pointer given to Enable, Disable or Remove panics with
//     an explanatory message; moby panics with a nil pointer dereference.
//   - Nothing persists and no event is logged (LogPluginEvent).
package plugintest
