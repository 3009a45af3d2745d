"""The performance suite: ``uv run python -m bench`` (see docs/performance.md). Not part of the tests."""
