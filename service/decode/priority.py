"""The CPU priority of decodes: a timeline decode (a whole long video on one worker, ``service.decode.timeline``)
runs at a raised nice value, so that single-clip decodes, the engine and the HTTP server get a core first whenever
they want one, and the long video takes what they leave (setting ``ADAFOCUS_TIMELINE_DECODE_NICE``).

Linux keeps a nice value per thread, and an unprivileged process may raise one but never lower it again: so the
worker runs the timeline's pass in a thread of its own, raises that thread's value, and the thread ends with the
pass; the worker's next single clip runs at the worker's own value. FFmpeg's codec threads, started by the pass's
thread when it opens the decoder, inherit its value. Nice values weigh threads within one scheduling group (with
autogroups: the server's session), so they order the server's own work, not other programs on the machine.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

MAX_NICE = 19  # the lowest priority Linux has
PER_THREAD = sys.platform == "linux"  # elsewhere a nice value is the process's: the pass keeps the worker's


def timeline_nice(base: int, increment: int) -> int:
    """The nice value a timeline decode runs at: the worker's own (``base``) raised by ``increment``, within
    Linux's range; an increment of 0 keeps the worker's."""
    if increment < 0:
        raise ValueError(f"a timeline decode's nice increment must be >= 0, got {increment}")
    return min(MAX_NICE, base + increment)


def thread_nice() -> int:
    """The calling thread's nice value (the process's where nice values are not per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if PER_THREAD else 0)


def run_niced(fn: Callable[[], None], increment: int) -> None:
    """Run ``fn`` in a thread of its own at ``timeline_nice(thread_nice(), increment)``; the caller waits for it and
    gets its exception, if any. The caller's own nice value is left as it was. Where nice values are not per thread
    (not Linux), ``fn`` runs here at the caller's value."""
    if not PER_THREAD:
        fn()
        return
    target = timeline_nice(thread_nice(), increment)
    failure: list[BaseException] = []

    def body() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
            fn()
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=body, name="adafocus-timeline-decode", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
