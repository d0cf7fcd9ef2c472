"""What ``adafocus classify`` prints: one line per file (or a timeline per video), or JSON Lines
(``--json``); the requests themselves are service/client.py's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from model.video import DecodeError
from service.client import Outcome, ServerError


def describe(outcome: Outcome) -> str:
    """One line per file: label, confidence, exit, compute, budget (or the error)."""
    if outcome.answer is None:
        where = " (decoding here)" if isinstance(outcome.error, DecodeError) else ""
        return f"{outcome.path}: error{where} {outcome.error}"
    a = outcome.answer
    if "segments" in a:
        return describe_timeline(outcome.path, a)
    reason = f" ({a['exit_reason']})" if "exit_reason" in a else ""
    where = f"  decoded on the {a.get('decoded_on', 'server')}"
    took = f"  {1e3 * a['timings']['total']:.0f} ms" if "timings" in a else f"  decode {1e3 * a['decode_s']:.0f} ms"
    line = (
        f"{outcome.path}: {a['label']} {100 * a['confidence']:.1f}%  exit {a['exit_step']}{reason}  "
        f"{a['gmacs']:.4f} GMACs  budget {a['budget']}{took}{where}  [{a['request_id']}]"
    )
    for cube in a.get("cubes") or []:
        line += f"\n    cube t={cube['t']} y={cube['y']} x={cube['x']} size={cube['size']} frames={cube['frames']}" + (
            " (skipped)" if cube["skipped"] else ""
        )
    return line



def describe_timeline(path: Path, a: dict[str, Any]) -> str:
    """A timeline as text: the video's line, then one line per segment (its label and exit step as a bar), gaps and
    an early end where they fall."""
    share = a["gmacs"] / a["gmacs_all_k"] if a["gmacs_all_k"] else 0.0
    lines = [
        f"{path}: {len(a['segments'])} segments of {a['segment_s']:g} s ({a['duration_s']:.1f} s): {a['label']} "
        f"{100 * a['confidence']:.1f}%  {a['gmacs']:.4f} GMACs ({100 * share:.0f}% of all-K)  budget {a['budget']}  "
        f"{1e3 * a['timings']['total']:.0f} ms  [{a['request_id']}]"
    ]
    marks = [(g["start_s"], f"  {g['start_s']:7.1f}-{g['end_s']:.1f} s  gap: no frames") for g in a["gaps"]]
    for seg in a["segments"]:
        bar = "#" * (seg["exit_step"] + 1)
        marks.append((seg["start_s"], f"  {seg['start_s']:7.1f}-{seg['end_s']:.1f} s  {seg['label']:<16} "
                      f"{100 * seg['confidence']:5.1f}%  exit {seg['exit_step']} {bar:<6} ({seg['exit_reason']})"))
    lines += [text for _, text in sorted(marks, key=lambda m: m[0])]
    if a.get("ended_at_s") is not None:
        lines.append(f"  ended at {a['ended_at_s']:.1f} s: {a.get('end_reason')}")
    return "\n".join(lines)



def timeline_records(path: Path, a: dict[str, Any]) -> list[dict[str, Any]]:
    """A timeline as JSON Lines records: one per segment (time order), then the video's summary."""
    rows: list[dict[str, Any]] = [{"file": str(path), "segment": seg} for seg in a["segments"]]
    rows.append({"file": str(path), **{k: v for k, v in a.items() if k != "segments"}})
    return rows



def write_outcomes(outcomes: Sequence[Outcome], as_json: bool, out: TextIO) -> None:
    """Print the answers: one line each (or indented cubes), or one JSON object per file (JSON Lines)."""
    for outcome in outcomes:
        if as_json:
            error = outcome.error
            record: dict[str, Any] = {"file": str(outcome.path)}
            if outcome.answer is not None and "segments" in outcome.answer:
                for row in timeline_records(outcome.path, outcome.answer):
                    out.write(json.dumps(row) + "\n")
                continue
            if outcome.answer is not None:
                record.update(outcome.answer)
            elif isinstance(error, ServerError):
                record["error"] = {
                    "status": error.status,
                    "code": error.code,
                    "message": error.message,
                    "request_id": error.request_id,
                }
            elif isinstance(error, DecodeError):
                record["error"] = {"status": None, "code": error.code, "message": error.message, "decoded_on": "client"}
            else:
                record["error"] = {"status": None, "code": "connection", "message": str(error)}
            out.write(json.dumps(record) + "\n")
        else:
            out.write(describe(outcome) + "\n")
