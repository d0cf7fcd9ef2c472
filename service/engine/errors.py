"""Domain errors of the engine. The HTTP layer maps them: QueueFull / EngineDraining -> 503,
DeadlineExceeded -> 504, ``model.budgets.BudgetError`` -> 400/422."""

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
