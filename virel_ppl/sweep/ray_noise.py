"""What Ray writes that is not the sweep's business: its C++ core's connection retries, the "Unhandled error" of
stopped trial actors, and the ``SystemExit`` with which it ends an actor. Each is held back or dropped here, so a
sweep's output is Tune's table and the sweep's own lines."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


@contextmanager
def quiet_ray_core():
    """Hold back what Ray's C++ core writes to stderr while it connects: each unanswered retry of a connection to
    something that is not a Ray head is a line (``Failed to connect to GCS ... within 5 seconds``, ~20 before Ray
    gives up). On success it is written out as it came; on failure it is dropped, and the sweep's ``error:`` line
    says what happened. (Ray's core logs before its log level is set, so only the file descriptor can hold it.)"""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


@contextmanager
def unhandled_errors_ignored():
    """Ray logs an ``ActorDiedError`` traceback for each result of a stopped trial actor that nobody fetched (Tune
    ends actors whose last calls are still pending) as "Unhandled error". Tune reports a trial's own errors itself
    (``SweepResult.failed``, ROOT/tune/.../error.txt), so these are shutdown noise: Ray's switch
    ``RAY_IGNORE_UNHANDLED_ERRORS`` (read when such an error is seen) turns them off while the trials run."""
    old = os.environ.get("RAY_IGNORE_UNHANDLED_ERRORS")
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_IGNORE_UNHANDLED_ERRORS", None)


def exit_noise_dropped(unraisable) -> None:
    """``sys.unraisablehook`` of a trial's worker: Ray ends an actor by raising ``SystemExit`` in it, which Python
    reports as "Exception ignored in ..." where it cannot propagate (a finished trial's threads); the rest as usual."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)
