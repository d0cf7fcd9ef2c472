"""Reading an upload: the multipart body streamed into a size-capped spool (memory, then a temporary file).

The body is parsed as it arrives (python-multipart callbacks): an oversized upload is refused as soon as it passes
the limit, without reading the rest; the small form fields (``budget``, ``explain``) are kept as text, each at most
once. A body that ends before the multipart closing boundary, or before its Content-Length, is refused
(``IncompleteUpload``): a cut-off upload is never decoded (its partial video could be classified, confidently wrong).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from model.video import Source

TRUE_WORDS = frozenset({"1", "true"})  # compared in lower case: `True`, `TRUE` too; nothing else, no whitespace
FALSE_WORDS = frozenset({"0", "false"})
Sampling = Literal["exact", "fast"]
# ``sampling`` of a request (/classify's form field, a timeline's, the OIP parameter); absent: ADAFOCUS_DECODE_SAMPLING
SAMPLINGS: tuple[Sampling, ...] = ("exact", "fast")


class TooManyFields(Exception):
    """A /classify form with more non-file fields than ``max_form_fields``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the form has more than {limit} fields besides `video`")
        self.limit = limit


class UploadTooLarge(Exception):
    """The upload passed ``max_upload_bytes`` (raised while streaming, before the whole body arrived)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload exceeds the limit of {limit} bytes")
        self.limit = limit


class NotMultipart(Exception):
    """The body is not multipart/form-data (with a boundary)."""


class NotJson(Exception):
    """A JSON route (PUT /budget) got a body of another media type (curl's `-d` alone sends a form)."""


class BadUpload(Exception):
    """A multipart upload that cannot be used (no ``video`` part, malformed form data, a bad form field)."""


class IncompleteUpload(Exception):
    """The body ended before the multipart closing boundary, or before the bytes its Content-Length announced."""


class UploadSpool:
    """Collects an upload chunk by chunk: in memory up to ``spool_bytes``, then in a temporary file on disk.

    ``write`` raises ``UploadTooLarge`` as soon as the total passes ``max_bytes``, so an oversized upload is
    rejected without reading the rest of it. ``source()`` is what a decoder process can read: the bytes, or the
    temporary file's path. ``content_sha256`` is the hash of the bytes written, updated as each chunk arrives (the
    result cache's key; no second pass over the upload).
    """

    def __init__(self, max_bytes: int, spool_bytes: int, directory: str | None = None) -> None:
        self.max_bytes, self.spool_bytes, self.directory = max_bytes, spool_bytes, directory
        self.size = 0
        self.other = 0  # bytes of the form's other fields: they count towards ``max_bytes`` too
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None
        self._sha256 = hashlib.sha256()

    def account(self, nbytes: int) -> None:
        """Count ``nbytes`` held elsewhere (the small form fields) towards ``max_bytes``."""
        self.other += nbytes
        if self.size + self.other > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size + self.other > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        self._sha256.update(chunk)
        if self._memory is not None and self.size > self.spool_bytes:
            self._file = tempfile.NamedTemporaryFile(prefix="adafocus-upload-", dir=self.directory)  # noqa: SIM115
            self._file.write(self._memory.getvalue())
            self._memory = None
        if self._file is not None:
            self._file.write(chunk)
        else:
            assert self._memory is not None
            self._memory.write(chunk)

    @property
    def content_sha256(self) -> str:
        """SHA-256 (hex) of the bytes written so far."""
        return self._sha256.hexdigest()

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def source(self) -> Source:
        if self._file is not None:
            self._file.flush()
            return self._file.name
        assert self._memory is not None
        return self._memory.getvalue()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # deletes the temporary file
        self._memory = None
        self._file = None

    def __enter__(self) -> UploadSpool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


MAX_FIELD_BYTES = 1024  # non-file form fields (budget, explain)
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries on top of the file, for the Content-Length check


@dataclass
class Upload:
    spool: UploadSpool
    fields: dict[str, str]  # the small form fields, decoded as UTF-8
    has_video: bool  # a part named ``video`` was present


class _MultipartSink:
    """python-multipart callbacks: the ``video`` part goes to the spool, other parts to small capped buffers."""

    def __init__(self, spool: UploadSpool, max_fields: int) -> None:
        self.spool = spool
        self.max_fields = max_fields
        self.parts = 0  # non-file parts seen
        self.fields: dict[str, str] = {}
        self.has_video = False
        self.ended = False  # the closing boundary was read: the body is whole
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers, self._name, self._buffer = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]  # python-multipart bounds a part's headers (a malformed body past it)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        if b"filename" in options and self._name != "video":  # `-F file=@clip.mp4`: say where the video goes
            raise BadUpload(f"send the video in the form field `video` (got a file in {self._name!r}), "
                            "e.g. curl -F video=@clip.mp4 ...")
        if self._name == "video":
            if self.has_video:
                raise BadUpload("more than one `video` part")
            self.has_video = True
        else:
            self.parts += 1
            if self.parts > self.max_fields:
                raise TooManyFields(self.max_fields)
            if self._name in self.fields:  # the last value silently winning would hide a client's mistake
                raise BadUpload(f"form field {self._name!r} is given more than once")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "video":
            self.spool.write(data[start:end])
        else:
            self.spool.account(end - start)
            self._buffer += data[start:end]
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise BadUpload(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._name is not None and self._name != "video":
            self.fields[self._name] = self._buffer.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True


async def read_upload(
    content_type: str | None,
    content_length: str | None,
    chunks: Any,
    max_bytes: int,
    spool_bytes: int,
    max_fields: int,
) -> Upload:
    """Stream a multipart/form-data body (``chunks``: an async iterator of bytes) into an ``UploadSpool``.

    Rejects at once when Content-Length already says the body is too large, and otherwise as soon as the
    ``video`` part and the other fields together pass ``max_bytes``, or the whole body (boundaries and part
    headers included, chunked or not) passes ``max_bytes + MULTIPART_OVERHEAD``, or the form has more than
    ``max_fields`` other fields; only one chunk at a time is held in the event loop. A body that ends short of its
    Content-Length or of the closing boundary raises ``IncompleteUpload``.
    """
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise NotMultipart("send the video as multipart/form-data with a `video` part")
    declared = int(content_length) if content_length is not None and content_length.isdigit() else None
    if declared is not None and declared > max_bytes + MULTIPART_OVERHEAD:
        raise UploadTooLarge(max_bytes)
    spool = UploadSpool(max_bytes, spool_bytes)
    sink = _MultipartSink(spool, max_fields)
    parser = MultipartParser(options[b"boundary"], sink.callbacks())  # type: ignore[arg-type]
    try:
        received = await _parse(chunks, parser, max_bytes + MULTIPART_OVERHEAD, max_bytes)
        _check_whole(received, declared, sink)
    except MultipartParseError as exc:
        spool.close()
        raise BadUpload(f"malformed multipart body: {exc}") from exc
    except BaseException:
        spool.close()
        raise
    return Upload(spool, sink.fields, sink.has_video)


async def _parse(chunks: Any, parser: MultipartParser, max_body: int, max_bytes: int) -> int:
    """Feed every chunk to ``parser``; the bytes received."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_body:  # counted as it arrives: Content-Length may be absent
            raise UploadTooLarge(max_bytes)
        parser.write(chunk)
    parser.finalize()
    return received


def _check_whole(received: int, declared: int | None, sink: _MultipartSink) -> None:
    """``IncompleteUpload`` unless the body reached its Content-Length and its closing boundary; ``BadUpload``
    without a ``video`` part."""
    if declared is not None and received < declared:
        raise IncompleteUpload(f"the body ended after {received} of the {declared} bytes its Content-Length announced")
    if not sink.ended:
        raise IncompleteUpload(
            f"the multipart body ended after {received} bytes, before its closing boundary: the upload was cut off"
        )
    if not sink.has_video:
        raise BadUpload("the form has no `video` part")


def parse_bool(value: str, name: str) -> bool:
    """A boolean form field: `true` or `false` in any case, or `1` or `0`; anything else (`yes`, `" true "`, an
    empty value) is refused rather than guessed."""
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadUpload(f"form field {name!r} must be true, false, 1 or 0, got {value[:32]!r}")


def parse_sampling(value: object, field: str = "form field") -> Sampling | None:
    """The one rule of ``sampling``, wherever a request gives it (a /classify form field, single clip or timeline;
    an OIP parameter, ``field="parameter"``): absent (None: the server's sampling), or exactly one of
    ``SAMPLINGS``; anything else (another word, `Fast`, an empty value, a number) is refused, naming the field."""
    if value is None:
        return None
    if isinstance(value, str) and value in SAMPLINGS:
        return value
    raise BadUpload(f"{field} 'sampling' must be one of {', '.join(SAMPLINGS)}, got {str(value)[:32]!r}")
