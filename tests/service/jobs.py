"""A scripted decode job for the pool tests; a light module, because every worker process imports it."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from model.video import DecodeError, DecodeLimits, Source


def scripted_job(source: Source, num_frames: int, size: int, limits: DecodeLimits) -> np.ndarray:
    """Runs in the worker process: crash, hang, raise, or return frames filled with len(source)."""
    if source == b"segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if source == b"hang":
        time.sleep(60)
    if source == b"bug":
        raise RuntimeError("a decoder bug")
    if source == b"bad":
        raise DecodeError("zero_frames", "no frames")
    return np.full((num_frames, size, size, 3), len(source), np.uint8)


def nice_job(source: Source, num_frames: int, size: int, limits: DecodeLimits) -> np.ndarray:
    """Runs in the worker process: frames filled with the nice value of the thread that decodes a single clip."""
    return np.full((num_frames, size, size, 3), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), np.uint8)
