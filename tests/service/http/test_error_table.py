"""The README's error table (status and ``code`` of every answer the server sends) is the error table in code
(service/http/errors.py), both ways: no code the server sends is undocumented, no documented code is made up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from model.video import DecodeCode, DecodeError
from model.video_segments import SegmentCode, SegmentError
from service.classify.tensor_errors import TensorCode, TensorError
from service.http.errors import ERRORS, INTERNAL, ROUTING_CODES

README = Path(__file__).resolve().parents[3] / "README.md"
ROW = re.compile(r"^\| (\d{3}) \| `([a-z0-9_]+)` \|", re.M)


def readme_answers() -> set[tuple[int, str]]:
    """(status, code) of every row of the table after "Every code the server sends"."""
    text = README.read_text()
    start = text.index("Every code the server sends")
    table = text[start : text.index("\n\n", text.index("\n|", start))]
    rows = ROW.findall(table)
    assert len(rows) == len(set(rows)), "a row is in the table twice"
    return {(int(status), code) for status, code in rows}


def code_answers() -> set[tuple[int, str]]:
    """(status, code) of every rule of the table in code, of the routing errors and of request validation."""
    own_codes = {  # rules without a code: the exception's own
        DecodeError: get_args(DecodeCode), TensorError: get_args(TensorCode), SegmentError: get_args(SegmentCode),
    }
    assert [kind for kind, rule in ERRORS.items() if rule.code is None] == list(own_codes)
    answers = {(INTERNAL.status, str(INTERNAL.code)), (422, "invalid_request"), *ROUTING_CODES.items()}
    for kind, rule in ERRORS.items():
        codes = own_codes[kind] if rule.code is None else (rule.code,)  # type: ignore[index]
        answers |= {(rule.status_by_code.get(code, rule.status), code) for code in codes}
    return answers


def test_every_answer_in_code_is_in_the_readme() -> None:
    assert code_answers() - readme_answers() == set()


def test_every_answer_in_the_readme_is_in_code() -> None:
    assert readme_answers() - code_answers() == set()
