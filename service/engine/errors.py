"""Domain errors of the engine. The HTTP layer's error table (service/http/errors.py) maps them: QueueFull /
EngineDraining -> 503, DeadlineExceeded -> 504, RequestCancelled -> 499, ``model.budgets.BudgetError`` (an unknown
level, bad thresholds) -> 422; any other EngineError (a failed model step) -> 500."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises or sets on a request's future."""


class QueueFull(EngineError):
    """The bounded admission queue is full; retry later."""


class EngineDraining(EngineError):
    """The engine is shutting down and admits no new requests."""


class DeadlineExceeded(EngineError):
    """The request's deadline passed before it was answered."""


class RequestCancelled(EngineError):
    """The request was cancelled (e.g. its client disconnected)."""
