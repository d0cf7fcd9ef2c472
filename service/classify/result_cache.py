"""No decode twice: the answers to recent uploads, kept by everything that decides them, in a bounded LRU.

A key is the upload's content hash (SHA-256, computed by ``service.classify.upload.UploadSpool`` as the bytes
stream in: no second pass), the bundle's hash, the budget the request runs under (its per-request level, if any,
and the version of the active threshold set: every swap, an operator's or the automatic budget's, makes a new one),
and the form fields that change the answer (``sampling``, ``explain``, ``frames``). An answer is stored under the
version its engine result was really bound to (a budget swapped while it was decoded stores it under the new one),
and only when it is a whole answer: a deadline answer (``exit_reason: deadline``) or an error never is.

A hit is the stored answer with this request's ``request_id``, ``replica`` and ``timings`` (queue, decode and compute
0: none ran) and ``cached: true``. The cache holds answers, never frames, unless the request asked for ``frames``
(then its answer carries them as PNG data URLs): memory is bounded by ``entries`` answers (about 2 KB each, a few
hundred KB with ``frames``). It lives on the event loop (no lock): lookups and stores come from the classify flow.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from service.schemas import ClassifyResponse, Timings


@dataclass(frozen=True)
class ResultKey:
    """Everything that decides an answer besides the server's fixed settings."""

    content_sha256: str  # the upload's bytes (the video part only)
    bundle_sha256: str  # the model
    budget: str | None  # the request's own level; None: the active budget
    budget_version: int  # the threshold set's version the request binds (lookup: the active one; store: the bound one)
    sampling: str  # the sampling that ran (the form field, else the server's)
    explain: bool
    frames: bool


class ResultCache:
    """The last ``entries`` answers by ``ResultKey``, least recently used evicted first; ``entries=0``: off."""

    def __init__(self, entries: int, on_lookup: Callable[[bool], None] = lambda hit: None) -> None:
        if entries < 0:
            raise ValueError(f"entries must be >= 0, got {entries}")
        self.entries = entries
        self.on_lookup = on_lookup  # called with True on a hit, False on a miss (metrics); not while off
        self._answers: OrderedDict[ResultKey, ClassifyResponse] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.entries > 0

    def __len__(self) -> int:
        return len(self._answers)

    def keys(self) -> list[ResultKey]:
        """The keys held, least recently used first."""
        return list(self._answers)

    def get(self, key: ResultKey) -> ClassifyResponse | None:
        """The stored answer (marked most recently used), or None; counts the hit or the miss."""
        if not self.enabled:
            return None
        found = self._answers.get(key)
        if found is not None:
            self._answers.move_to_end(key)
        self.on_lookup(found is not None)
        return found

    def put(self, key: ResultKey, body: ClassifyResponse) -> bool:
        """Store ``body`` unless it is a deadline answer (or the cache is off); True when stored."""
        if not self.enabled or body.exit_reason == "deadline":
            return False
        self._answers[key] = body.model_copy()  # stored once the answer is whole: nothing changes it afterwards
        self._answers.move_to_end(key)
        while len(self._answers) > self.entries:
            self._answers.popitem(last=False)
        return True


def cached_answer(stored: ClassifyResponse, request_id: str, replica: str | None, total_s: float) -> ClassifyResponse:
    """A hit as this request's answer: its own ID, replica and timings (nothing but the upload ran)."""
    return stored.model_copy(  # shallow: the stored lists (top_k, steps, frames) are shared, never changed
        update={
            "request_id": request_id,
            "replica": replica,
            "cached": True,
            "timings": Timings(queue=0.0, decode=0.0, compute=0.0, total=total_s),
        },
    )
