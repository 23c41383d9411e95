// Package bench holds benchmarks of the plugin controller against moby
// v28.3.0's upstream controller and against the bare Backend calls both
// make, all on the in-memory plugintest.Backend. It has no non-test code;
// see BENCHMARKS.md and run.sh beside this file.
package bench
