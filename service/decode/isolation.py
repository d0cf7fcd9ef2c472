"""Decoder workers start without the server's secrets: an environment of named, harmless variables only.

The decoder processes run FFmpeg on untrusted files, so they are the likeliest part of the server to run an
attacker's code. They get none of the ``ADAFOCUS_*`` settings (a worker reads no settings: its limits come as
arguments), so neither the operator token nor the paths of the token and API-key files; and of everything else
only the variables in ``WORKER_ENV_NAMES`` / ``WORKER_ENV_PREFIXES`` (the interpreter, locale, libraries,
threads and GPU selection), so that no cloud credential, registry token or other secret an operator's platform
sets (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN`` ...) reaches them either: an allow-list, not a deny-list of guesses.

How: multiprocessing's ``spawn`` (CPython 3.11 ``popen_spawn_posix.Popen._launch``) execs the child through
``util.spawnv_passfds``, which passes no environment, so the child gets the process's whole ``environ``; editing
``os.environ`` around ``Process.start()`` would race every other thread (it is process-global) and restarts run on
the supervisor threads. ``IsolatedPopen`` is that ``_launch`` with the exec done by ``subprocess.Popen`` (public,
thread-safe), given an explicit ``env`` and the same ``pass_fds`` and ``close_fds=True``: the child starts with
exactly that environment (``/proc/<pid>/environ`` shows the exec-time block, which an in-process scrub could never
clear) and with no descriptor but stdio and multiprocessing's own pipes (its job pipe, the start and sentinel pipes,
the resource tracker's).

What it does not protect against: a compromised worker runs as the server's user, so it can still read files by
path (the token and API-key files) and ``/proc/<server pid>/environ``; keeping secrets from such code needs another
user, a sandbox (seccomp, namespaces) or an undumpable server process. This removes the secrets an exploit would
find without looking for them, in the worker's own environment, memory and descriptors.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Mapping
from multiprocessing import context, popen_fork, popen_spawn_posix, reduction, resource_tracker, spawn, util
from typing import Any

# What a decoder process may inherit: the interpreter and its libraries, locale and time zone, temporary files,
# thread counts and the GPUs it may see. Anything else (every ADAFOCUS_* setting included) is left behind.
WORKER_ENV_NAMES = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "COVERAGE_PROCESS_START",
})
WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "CUDA_", "NVIDIA_")
SETTINGS_PREFIX = "ADAFOCUS_"  # never passed on, whatever the lists above say


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a decoder worker starts with, given the server's."""
    return {
        name: value for name, value in environ.items()
        if not name.startswith(SETTINGS_PREFIX) and (name in WORKER_ENV_NAMES or name.startswith(WORKER_ENV_PREFIXES))
    }


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class IsolatedPopen(popen_spawn_posix.Popen):
    """``spawn``'s Popen, exec'd with an explicit environment; its child is reaped through ``subprocess``."""

    _fds: list[int]  # the descriptors the child gets (set by popen_spawn_posix.Popen.__init__)

    def __init__(self, process_obj: Any, env: dict[str, str]) -> None:
        self._env = env
        self._child: subprocess.Popen[bytes] | None = None
        super().__init__(process_obj)

    def _launch(self, process_obj: Any) -> None:  # CPython 3.11 popen_spawn_posix.Popen._launch, but the exec
        tracker_fd = resource_tracker.getfd()
        assert tracker_fd is not None, "getfd starts the resource tracker"
        self._fds.append(tracker_fd)
        prep_data = spawn.get_preparation_data(process_obj._name)
        fp = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            context.set_spawning_popen(None)
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self._child = subprocess.Popen(
                cmd, executable=spawn.get_executable(), env=self._env, pass_fds=sorted(set(self._fds)),
                close_fds=True, restore_signals=False,
            )
            self.pid = self._child.pid
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            self.finalizer = util.Finalize(self, _close_fds, (parent_r, parent_w))
            os.close(child_r)
            os.close(child_w)

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        # subprocess reaps its child (a second waitpid here could take the status of a re-used pid from it)
        if self.returncode is None and self._child is not None:
            self.returncode = self._child.poll() if flag == os.WNOHANG else self._child.wait()
        return self.returncode


class IsolatedProcess(context.SpawnProcess):
    """A ``spawn`` process started with ``env`` as its whole environment."""

    def __init__(self, *args: Any, env: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._child_env = env

    def _Popen(self, process_obj: Any) -> popen_fork.Popen:  # type: ignore[override]  # an instance's, not static
        return IsolatedPopen(process_obj, self._child_env)

    def __getstate__(self) -> dict[str, Any]:  # the pickle sent to the child does not carry it a second time
        return {k: v for k, v in self.__dict__.items() if k != "_child_env"}


class IsolatedContext:
    """What ``DecodePool`` needs of a multiprocessing context (``Pipe``, ``Process``), with clean environments."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.env = worker_environment(environ)  # taken once, at construction: restarts run on other threads
        self._spawn = context.SpawnContext()

    def Pipe(self, duplex: bool = True) -> Any:  # multiprocessing's name
        return self._spawn.Pipe(duplex)

    def Process(self, *args: Any, **kwargs: Any) -> IsolatedProcess:  # multiprocessing's name
        return IsolatedProcess(*args, env=self.env, **kwargs)
