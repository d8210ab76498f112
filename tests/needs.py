"""A skip that cannot hide a missing piece in CI.

Some tests need something a developer's checkout may lack (``lint-imports`` on PATH, the toy world's shipped
weights). Locally such a test skips, saying what is missing; in CI (environment ``CI=true``, which ``.ci/run``
sets) the same condition FAILS the test, so a broken install or a checkout without the weights cannot turn a
check into a silent skip. Every skip in ``tests/`` goes through :func:`need`, or carries a ``# skip-ok:``
comment saying why the condition is never CI's (``tests/test_guarantees.py`` scans for both).
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """True where the ``CI`` environment variable says so (``true``/``1``/``yes``, any case)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def need(condition: bool, reason: str) -> None:
    """Inside a test: continue if ``condition``; else skip it locally, fail it in CI (``reason`` says what is
    missing and how to get it)."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required in CI (CI=true), so not skipped: {reason}", pytrace=False)
    pytest.skip(reason)
