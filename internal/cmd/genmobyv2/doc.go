// Command genmobyv2 derives the moby v2 flavour of this repository, the
// nested module github.com/seed-e85c93d5/plugin/mobyv2 in the folder
// mobyv2/, from the docker/docker v28 sources, which stay the only ones
// maintained by hand.
//
// It parses every Go file of the repository (except bench/, cmd/ and this
// generator), rewrites import paths and qualified identifiers with go/ast
// following the table in mapping.go, rewrites import paths and version
// words in comments and string literals, and writes the gofmt'ed result,
// headed "// Code generated ... DO NOT EDIT.", to the same relative path
// under mobyv2/. testdata folders are copied as they are. Files that an
// earlier run generated and that no longer have a source are removed;
// mobyv2/go.mod, go.sum and README.md are never touched.
//
// A qualified identifier of a docker/docker package that the table does not
// translate stops the generator with its position, so a new dependency on
// docker/docker cannot slip into the moby v2 flavour unnoticed.
//
// Regenerate from the repository root with
//
//	go generate ./internal/cmd/genmobyv2
//
// (or go run ./internal/cmd/genmobyv2); .ci/mobyv2 fails if the committed
// mobyv2/ differs from a fresh run.
package main

//go:generate go run .
