"""Helpers for tests and benchmarks: synthetic xentrace records."""
