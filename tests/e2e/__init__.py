"""End to end: the CLI, the console, hardening (kill -9, hostile input) and the benchmark scripts."""
