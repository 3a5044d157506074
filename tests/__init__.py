"""The tests, and the helpers that they and bench/ import by their full name (tests.processes, ...)."""
