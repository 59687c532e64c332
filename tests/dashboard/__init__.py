"""Dashboard tests: the real server over HTTP, its API fuzzed, and a real browser."""
