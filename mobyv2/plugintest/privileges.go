package plugintest

// Written by hand: the moby v2 counterpart of ../../plugintest/privileges.go,
// the one rule of the fake that differs between the daemon generations (see
// mobyv2/README.md).

// defaultPrivilegeRule is the comparison of moby v2's Manager, the daemon
// this flavour mirrors (see PrivilegesMobyV2).
const defaultPrivilegeRule = PrivilegesMobyV2
