package plugintest

// This file holds the one rule of the fake that differs between the daemon
// generations: which privilege comparison a Backend plays by default. The
// moby v2 flavour has a hand-written mobyv2/plugintest/privileges.go in its
// place.

// defaultPrivilegeRule is the comparison of docker v28's Manager, the
// daemon this flavour mirrors, bug included (see PrivilegesDockerV28).
const defaultPrivilegeRule = PrivilegesDockerV28
