"""Support code for the tests and benchmarks: audio samples, a tiny XTTS checkpoint, servers."""
