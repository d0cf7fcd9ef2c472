"""The single error table and the Prometheus metrics (names, labels, values)."""

from __future__ import annotations

import pytest

from model.budgets import BudgetError
from model.video import DecodeError
from service.classify.upload import BadUpload, NotMultipart, UploadTooLarge
from service.decode.pool import DecodeBusy, DecoderCrashed
from service.engine.errors import DeadlineExceeded, EngineDraining, QueueFull
from service.http.auth import BudgetChangesDisabled, Forbidden, Unauthorized
from service.http.errors import to_api_error


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (DecodeError("not_a_video", "m"), 415, "not_a_video"),
        (DecodeError("too_large", "m"), 413, "too_large"),
        (DecodeError("no_video_stream", "m"), 422, "no_video_stream"),
        (DecodeError("undecodable", "m"), 422, "undecodable"),
        (DecodeError("decode_timeout", "m"), 422, "decode_timeout"),
        (UploadTooLarge(10), 413, "too_large"),
        (NotMultipart("m"), 415, "unsupported_media_type"),
        (BadUpload("m"), 422, "invalid_request"),
        (DecoderCrashed("m"), 422, "decoder_crashed"),
        (DecodeBusy("m"), 503, "queue_full"),
        (QueueFull("m"), 503, "queue_full"),
        (EngineDraining("m"), 503, "draining"),
        (DeadlineExceeded("m"), 504, "deadline_exceeded"),
        (BudgetError("m"), 422, "invalid_budget"),
        (Unauthorized("m"), 401, "unauthorized"),
        (Forbidden("m"), 403, "forbidden"),
        (BudgetChangesDisabled("m"), 403, "budget_changes_disabled"),
        (KeyError("bug"), 500, "internal"),
    ],
)
def test_error_table(exc: Exception, status: int, code: str) -> None:
    error = to_api_error(exc, retry_after_s=3)
    assert (error.status, error.code) == (status, code)
    assert ("Retry-After" in error.headers) == (status == 503)
