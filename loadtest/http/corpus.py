"""A load-test corpus: a directory of encoded videos, optionally with ``labels.csv`` for accuracy.

``labels.csv`` has a header with a ``filename`` column and one of ``label`` / ``class_name`` (a class name, or
an integer class id) and optionally ``class_id``. ``adafocus synth`` writes such a directory. Files are read
into memory once, so that disk reads stay out of the measurement.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
MIME_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
}


class CorpusError(ValueError):
    """A corpus directory that has no videos or a ``labels.csv`` that cannot be read."""


@dataclass(frozen=True)
class CorpusItem:
    filename: str
    data: bytes
    mime: str
    label: str | None = None  # ground-truth class name, when labels.csv names it
    class_id: int | None = None  # ground-truth class id, when labels.csv gives it

    def is_correct(self, class_id: int | None, label: str | None) -> bool | None:
        """Whether a prediction matches the ground truth; None when this item has no ground truth."""
        if self.class_id is not None and class_id is not None:
            return self.class_id == class_id
        if self.label is not None and label is not None:
            return self.label == label
        return None


@dataclass(frozen=True)
class Corpus:
    root: Path
    items: tuple[CorpusItem, ...]

    @property
    def labelled(self) -> bool:
        return any(item.label is not None or item.class_id is not None for item in self.items)


def _read_labels(path: Path) -> dict[str, tuple[str | None, int | None]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        if "filename" not in fields:
            raise CorpusError(f"{path}: needs a 'filename' column, has {sorted(fields)}")
        out: dict[str, tuple[str | None, int | None]] = {}
        for row in reader:
            name = (row.get("class_name") or "").strip() or None
            label = (row.get("label") or "").strip()
            raw_id = (row.get("class_id") or "").strip() or label  # a numeric ``label`` column is a class id
            class_id = int(raw_id) if raw_id.isdigit() else None
            if name is None and label and not label.isdigit():
                name = label
            out[Path(row["filename"]).name] = (name, class_id)
    return out


def load_corpus(root: str | Path, limit: int | None = None) -> Corpus:
    """All videos under ``root`` (recursively, sorted by path), with labels when ``labels.csv`` exists."""
    base = Path(root)
    if not base.is_dir():
        raise CorpusError(f"corpus directory {base} does not exist")
    paths = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise CorpusError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) under {base}")
    labels_file = base / "labels.csv"
    labels = _read_labels(labels_file) if labels_file.exists() else {}
    items = []
    for p in paths:
        name, class_id = labels.get(p.name, (None, None))
        mime = MIME_TYPES.get(p.suffix.lower(), "application/octet-stream")
        items.append(CorpusItem(p.name, p.read_bytes(), mime, name, class_id))
    return Corpus(base, tuple(items))
