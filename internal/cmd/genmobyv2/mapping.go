package main

// This file is the whole v28 → moby v2 translation table. Every difference
// between docker/docker v28.3.0 and github.com/moby/moby/v2 that the
// generated flavour absorbs is one entry here; the rewriting machinery in
// rewrite.go knows nothing about moby.

const (
	// sourceModule is the module the sources belong to, and targetModule the
	// nested module that is generated from them, in the folder targetDir.
	sourceModule = "github.com/seed-e85c93d5/plugin"
	targetModule = sourceModule + "/mobyv2"
	targetDir    = "mobyv2"

	// generatorDir is this generator's own package, never translated.
	generatorDir = "internal/cmd/genmobyv2"
)

// skipDirs are the source folders, relative to the repository root, that are
// not translated, with their subfolders. bench/ and cmd/ compare with or
// demonstrate the v28 flavour only, and integration/dockerd builds v28's
// dockerd (see mobyv2/README.md).
var skipDirs = []string{
	"bench",
	"cmd",
	// The forked-daemon harness builds docker/docker v28.3.0's and moby
	// v2's dockerd (with this module's mobyv2/ swapped into moby v2's) and
	// drives both with docker v28's client, from one set of sources.
	"integration/dockerd",
	"internal/cmd",
	targetDir,
}

// handWritten are the source files, relative to the repository root, whose
// behaviour differs between the daemon generations, so that they are not
// translated: the file of the same path under mobyv2/ is written by hand
// (and listed in mobyv2/README.md). The generator checks that it exists and
// is not generated.
var handWritten = []string{
	// moby v2 rewrote the Manager's validatePrivileges: every index is
	// compared, values sorted, nil equal to empty.
	"plugintest/privileges.go",
	"plugintest/privileges_test.go",
}

// skipTag is the build tag of the v28 compatibility job: files that are
// built only without it (//go:build !noprotogen) cross-check against the
// gogo-generated methods of docker v28.0–v28.3's runtime.PluginSpec, which
// moby v2 keeps internal, and are not translated.
const skipTag = "noprotogen"

// movedPackages maps a docker/docker package to the moby v2 package that has
// the same names for everything this repository uses.
var movedPackages = map[string]string{
	"github.com/docker/docker/api/types/backend":                 "github.com/moby/moby/v2/daemon/server/backend",
	"github.com/docker/docker/api/types/events":                  "github.com/moby/moby/api/types/events",
	"github.com/docker/docker/api/types/registry":                "github.com/moby/moby/api/types/registry",
	"github.com/docker/docker/api/types/swarm":                   "github.com/moby/moby/api/types/swarm",
	"github.com/docker/docker/daemon/cluster/controllers/plugin": "github.com/moby/moby/v2/daemon/cluster/controllers/plugin",
	"github.com/docker/docker/errdefs":                           "github.com/moby/moby/v2/errdefs",
	"github.com/docker/docker/plugin":                            "github.com/moby/moby/v2/daemon/pkg/plugin",
	"github.com/docker/docker/plugin/v2":                         "github.com/moby/moby/v2/daemon/pkg/plugin/v2",
	"github.com/docker/docker/registry":                          "github.com/moby/moby/v2/daemon/pkg/registry",
}

const (
	mobyPluginTypes = "github.com/moby/moby/api/types/plugin"
	mobySwarm       = "github.com/moby/moby/api/types/swarm"
	mobyBackend     = "github.com/moby/moby/v2/daemon/server/backend"
	mobyAuthConfig  = "github.com/moby/moby/api/pkg/authconfig"
)

// qualified is a package-level name: the package's import path and the name.
type qualified struct{ path, name string }

// movedNames maps single names to their moby v2 homes, where the name, the
// package or both changed. A name listed here wins over movedPackages. A
// package that appears here but not in movedPackages is translated name by
// name, and a name of it that is not listed stops the generator.
var movedNames = map[qualified]qualified{
	// api/types' plugin types moved to api/types/plugin and lost their prefix.
	{"github.com/docker/docker/api/types", "Plugin"}:                {mobyPluginTypes, "Plugin"},
	{"github.com/docker/docker/api/types", "PluginConfig"}:          {mobyPluginTypes, "Config"},
	{"github.com/docker/docker/api/types", "PluginConfigArgs"}:      {mobyPluginTypes, "Args"},
	{"github.com/docker/docker/api/types", "PluginConfigInterface"}: {mobyPluginTypes, "Interface"},
	{"github.com/docker/docker/api/types", "PluginConfigLinux"}:     {mobyPluginTypes, "LinuxConfig"},
	{"github.com/docker/docker/api/types", "PluginConfigNetwork"}:   {mobyPluginTypes, "NetworkConfig"},
	{"github.com/docker/docker/api/types", "PluginConfigRootfs"}:    {mobyPluginTypes, "RootFS"},
	{"github.com/docker/docker/api/types", "PluginConfigUser"}:      {mobyPluginTypes, "User"},
	{"github.com/docker/docker/api/types", "PluginDevice"}:          {mobyPluginTypes, "Device"},
	{"github.com/docker/docker/api/types", "PluginEnv"}:             {mobyPluginTypes, "Env"},
	{"github.com/docker/docker/api/types", "PluginInterfaceType"}:   {mobyPluginTypes, "CapabilityID"},
	{"github.com/docker/docker/api/types", "PluginMount"}:           {mobyPluginTypes, "Mount"},
	{"github.com/docker/docker/api/types", "PluginPrivilege"}:       {mobyPluginTypes, "Privilege"},
	{"github.com/docker/docker/api/types", "PluginPrivileges"}:      {mobyPluginTypes, "Privileges"},
	{"github.com/docker/docker/api/types", "PluginSettings"}:        {mobyPluginTypes, "Settings"},
	// CreateFromContext's options became a backend config type.
	{"github.com/docker/docker/api/types", "PluginCreateOptions"}: {mobyBackend, "PluginCreateConfig"},

	// The payload's Go type: moby v2 keeps its protobuf copy internal
	// (daemon/cluster/internal/runtime); the API's plain struct has the same
	// field names, which is all the payload codec needs.
	{"github.com/docker/docker/api/types/swarm/runtime", "PluginSpec"}:      {mobySwarm, "RuntimeSpec"},
	{"github.com/docker/docker/api/types/swarm/runtime", "PluginPrivilege"}: {mobySwarm, "RuntimePrivilege"},

	// The X-Registry-Auth codec left api/types/registry.
	{"github.com/docker/docker/api/types/registry", "EncodeAuthConfig"}: {mobyAuthConfig, "Encode"},
	{"github.com/docker/docker/api/types/registry", "DecodeAuthConfig"}: {mobyAuthConfig, "Decode"},
}

// preferredNames are the local names given to packages that a translated file
// newly imports, when the name is free; moby's own code uses the same ones.
var preferredNames = map[string]string{
	mobyPluginTypes: "plugintypes",
}

// packageNames are the names declared by packages whose import path does not
// end in their name.
var packageNames = map[string]string{
	"github.com/docker/docker/plugin/v2":           "v2",
	"github.com/moby/moby/v2/daemon/pkg/plugin/v2": "v2",
	"github.com/moby/swarmkit/v2":                  "swarmkit",
	"github.com/containerd/containerd/v2":          "containerd",
	"github.com/moby/moby/v2":                      "moby",
	"gotest.tools/v3":                              "gotest",
	sourceModule:                                   "plugin",
	targetModule:                                   "plugin",
}

// proseReplacements rewrite comments (and only comments) that name the
// daemon release a file is written for, after import paths and qualified
// names were rewritten. Comments about docker v28 history (the payload
// codec's cross-checks, for instance) stay as they are.
var proseReplacements = []struct{ old, new string }{
	{"(moby v28.3.0)", "(moby v2.0.0-beta.24)"},
	{"github.com/moby/moby/v2 v28.3.0", "github.com/moby/moby/v2 v2.0.0-beta.24"},
	{"(github.com/moby/moby/v2/daemon/pkg/plugin, v28.3.0)", "(github.com/moby/moby/v2/daemon/pkg/plugin, v2.0.0-beta.24)"},
	{"(plugin/errors.go in v28.3.0)", "(daemon/pkg/plugin/errors.go in v2.0.0-beta.24)"},
	// The package doc's supported releases.
	{"It builds with every docker/docker v28 release from v28.3.0 to v28.5.2", "It builds with github.com/moby/moby/v2 from v2.0.0-beta.24 on"},
	{"(CI checks v28.3.3, v28.4.0 and v28.5.2); Go's minimal version selection", "(CI checks v2.0.0-beta.24); Go's minimal version selection"},
	// plugintest.Runtime's doc: the payload type moby v2 has is a plain
	// struct, never generated.
	{"removed from swarm.RuntimeSpec in v28.4.0, so it works with every v28", "never had on swarm.RuntimeSpec (docker v28.4.0 removed them from"},
	{"// release.", "// runtime.PluginSpec), so it works with every release."},
}
