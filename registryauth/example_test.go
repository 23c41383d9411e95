package registryauth_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/registry"
	"github.com/seed-e85c93d5/plugin/registryauth"
)

// show prints what auth answers for each reference.
func show(auth registryauth.Func, names ...string) {
	for _, name := range names {
		ref, err := reference.ParseNormalizedNamed(name)
		if err != nil {
			panic(err)
		}
		cfg, err := auth(context.Background(), ref)
		switch {
		case err != nil:
			fmt.Printf("%s: error: %v\n", name, err)
		case cfg == nil:
			fmt.Printf("%s: anonymous\n", name)
		case cfg.IdentityToken != "":
			fmt.Printf("%s: identity token for %s\n", name, cfg.ServerAddress)
		default:
			fmt.Printf("%s: user %q for %s\n", name, cfg.Username, cfg.ServerAddress)
		}
	}
}

func ExampleStatic() {
	// Typically passed to plugin.WithRegistryAuth.
	auth := registryauth.Static("https://registry.example.com:5000/v2/", registry.AuthConfig{
		Username: "deploy",
		Password: "not-printed",
	})
	show(auth,
		"registry.example.com:5000/team/volume-plugin:1.2",
		"registry.example.com/team/volume-plugin:1.2", // other port: other registry
		"vieux/sshfs:latest",
	)

	hub := registryauth.Static("index.docker.io", registry.AuthConfig{Username: "hubuser", Password: "not-printed"})
	show(hub, "vieux/sshfs:latest")
	// Output:
	// registry.example.com:5000/team/volume-plugin:1.2: user "deploy" for registry.example.com:5000
	// registry.example.com/team/volume-plugin:1.2: anonymous
	// vieux/sshfs:latest: anonymous
	// vieux/sshfs:latest: user "hubuser" for https://index.docker.io/v1/
}

func ExampleFromEncoded() {
	// An X-Registry-Auth value, as produced by "docker plugin install".
	header, err := registry.EncodeAuthConfig(registry.AuthConfig{
		Username:      "deploy",
		Password:      "not-printed",
		ServerAddress: "registry.example.com",
	})
	if err != nil {
		panic(err)
	}
	auth, err := registryauth.FromEncoded(header)
	if err != nil {
		panic(err)
	}
	// The credentials go to the header's registry only.
	show(auth, "registry.example.com/team/volume-plugin", "vieux/sshfs")

	// Errors never repeat the header.
	_, err = registryauth.FromEncoded("bm90LWpzb24tYnV0LXNlY3JldA==")
	fmt.Println(err)
	// Output:
	// registry.example.com/team/volume-plugin: user "deploy" for registry.example.com
	// vieux/sshfs: anonymous
	// registryauth: invalid encoded registry auth: malformed JSON at byte offset 2: invalid argument
}

func ExampleFromDockerConfig() {
	dir, err := os.MkdirTemp("", "registryauth-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	// A config.json as written by "docker login"; "auth" is
	// base64("user:password").
	path := filepath.Join(dir, "config.json")
	err = os.WriteFile(path, []byte(`{
	"auths": {
		"https://index.docker.io/v1/": {"auth": "aHVidXNlcjpub3QtcHJpbnRlZA=="},
		"registry.example.com:5000": {"identitytoken": "not-printed"}
	}
}`), 0o600)
	if err != nil {
		panic(err)
	}

	// The file is read on every call; a missing file means anonymous.
	auth := registryauth.FromDockerConfig(path)
	show(auth,
		"vieux/sshfs",
		"registry.example.com:5000/team/volume-plugin",
		"other.example.com/plugin",
	)
	// Output:
	// vieux/sshfs: user "hubuser" for https://index.docker.io/v1/
	// registry.example.com:5000/team/volume-plugin: identity token for registry.example.com:5000
	// other.example.com/plugin: anonymous
}
