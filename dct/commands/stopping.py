"""Stopping `dct run` / `dct synthesize` on SIGTERM or SIGINT: one line, exit 143 / 130, nothing half-written.

What sends the signal (`timeout`, a batch scheduler, Ctrl-C, a Prefect worker cancelling a run) usually sends
it to the whole process group, so the temporary Prefect API server, a child process, stops with us. Left to
Prefect, the signal crashes the class's task and every later state report and log flush retries against the
stopped server: minutes of tracebacks. So the command runs the flow in a worker thread and keeps the signals
for the main thread, which only waits (Prefect installs its own SIGTERM handler only in the main thread). On
the first signal the main thread stops the temporary server, prints one line naming the classes finished
before the stop, and ends the process at once, whatever the flow thread is doing.

Ending the process mid-class is safe by the storage contract (docs/design.md, "Storage contract";
docs/reliability.md, "Stopping a run"): every write is atomic to readers (a hidden temporary name, then
``os.replace``; one PUT on S3) and a class's record (a synthetic class's part) is written last, so the class
in progress has no record and the next run does it, exactly as after a crash.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The stop line of these commands names the classes they finished: (key of :func:`note_finished`, verb).
# Other commands' stop line names only the signal.
WORK = {"dct run": ("run", "finished"), "dct synthesize": ("synthesize", "synthesized")}

# Class ids this process finished (record / part written), by work ("run", "synthesize"), in the order they
# finished. Appended by the tasks right after the record is written; read by the stop line.
_finished: dict[str, list[int]] = {}


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived while the command's own code ran in the main thread (before or after the
    flow); :func:`dct.cli.main` prints :func:`stop_line` and returns 128 + ``signum``. A BaseException, like
    KeyboardInterrupt, so no ``except Exception`` on the way up records it as a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_raise_stopped() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT raise :class:`Stopped` there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stopped(signum: int, _frame) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def note_finished(work: str, class_id: int) -> None:
    """Remember that this process finished ``class_id`` (its record or part is written) for the stop line."""
    _finished.setdefault(work, []).append(class_id)


def finished(work: str) -> list[int]:
    """The class ids noted for ``work`` since the last :func:`run_until_stopped` began."""
    return list(_finished.get(work, ()))


def run_until_stopped(command: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` (a flow call) in a worker thread; SIGTERM/SIGINT end the process cleanly.

    On the first signal: one line on stderr (:func:`stop_line`), exit status 128 + the signal number (143 for
    SIGTERM, 130 for SIGINT). Outside the main thread (no signal handlers there) ``fn`` is simply called.

    Returns:
        What ``fn`` returned; what it raised is raised here.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    _finished.pop(WORK.get(command, ("",))[0], None)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            outcome["error"] = exc

    # The flow sees the caller's context (Prefect's settings, e.g. a test harness's API URL, are contextvars).
    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(target,), name=f"{command} flow", daemon=True)

    def on_signal(signum: int, _frame) -> None:
        _stop(command, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)  # short waits: the handler runs between them at the latest
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def stop_line(command: str, signum: int) -> str:
    """The one line printed when a signal stops ``command`` (``"dct run"``), e.g. ``dct run: stopped by
    SIGTERM; classes finished before the stop: 0, 1; the rest will be done by the next run``."""
    name = signal.Signals(signum).name
    if command not in WORK:
        return f"{command}: stopped by {name}"
    work, verb = WORK[command]
    ids = finished(work)
    shown = ", ".join(map(str, ids[:20])) + (f" … ({len(ids)} in all)" if len(ids) > 20 else "")
    return (
        f"{command}: stopped by {name}; classes {verb} before the stop: {shown or 'none'}; "
        "the rest will be done by the next run"
    )


def _stop(command: str, signum: int) -> None:
    """The handler's work: one line, the temporary server stopped, exit 128 + ``signum``, whatever fails."""
    for sig in STOP_SIGNALS:  # a second signal (Ctrl-C twice, a scheduler's repeat) must not re-enter
        signal.signal(sig, signal.SIG_IGN)
    line = stop_line(command, signum)
    err = 2
    try:
        # Whatever the flow thread still logs or prints while we stop the server would follow our line.
        logging.disable(logging.CRITICAL)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, RuntimeError):  # a closed or busy stream: go on
                stream.flush()
        err = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        _stop_temporary_server()
    finally:
        with contextlib.suppress(OSError):
            os.write(err, (line + "\n").encode())
        # os._exit, not sys.exit: a normal exit runs Prefect's atexit hooks, which flush logs and events to the
        # (stopped) API and wait on its worker threads, and the interpreter would unwind the flow thread through
        # Prefect's crash reporting. Our own files need nothing at exit: each store write is already complete.
        os._exit(128 + signum)


def _stop_temporary_server() -> None:
    """Stop the temporary Prefect API server this process started, if any (a signal sent to our pid alone
    would otherwise leave it running, orphaned). Waits at most a few seconds; never raises."""
    try:
        # The no-port instance is the one Prefect's clients start for a run without PREFECT_API_URL. The
        # module may be half-imported by the flow thread at this instant: then no server was started yet.
        server_class = getattr(sys.modules.get("prefect.server.api.server"), "SubprocessASGIServer", None)
        process = getattr(server_class(), "server_process", None) if server_class is not None else None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
    except Exception:  # noqa: BLE001 - best effort on the way out: the exit must happen whatever fails here
        pass
