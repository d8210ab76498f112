"""The flow tests use the session's Prefect harness and tiny world (tests/conftest.py)."""
