"""The API's JSON parser: strict UTF-8 and JSON, with limits on size, depth, string length and item count."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework import parsers

from .errors import PayloadTooLarge, ValidationFailed

READ_CHUNK_BYTES = 64 * 1024


# Characters that make a name read differently from what it is: bidirectional overrides and
# isolates (U+202A-U+202E, U+2066-U+2069, the marks U+200E, U+200F, U+061C), and invisible ones
# (zero-width space and non-joiner, word joiner, BOM). The zero-width joiner (U+200D) stays:
# emoji sequences need it.
_DISGUISING = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u200b\u200c\u2060\ufeff"
)


def display_name_problem(value: str) -> str | None:
    """Why a name shown to people (a task title, an agent name) is refused, or None: control
    characters, or characters that reorder or hide text."""
    for position, char in enumerate(value):
        if char in _DISGUISING:
            return f"holds U+{ord(char):04X} at position {position}, which reorders or hides text"
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            return f"holds the control character U+{ord(char):04X} at position {position}"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _path(parts: list[str | int]) -> str:
    return ".".join(str(p) for p in parts) or "body"


def _check_string(value: str, parts: list[str | int], what: str) -> None:
    limit = settings.ORDINAUT_MAX_JSON_STRING_CHARS
    where = _path(parts)
    if len(value) > limit:
        message = f"{what} is {len(value)} characters long; the limit is {limit} (ORDINAUT_MAX_JSON_STRING_CHARS)"
        raise ValidationFailed.on(where, message)
    if "\x00" in value:
        raise ValidationFailed.on(where, f"{what} contains a NUL (\\u0000) character, which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed.on(where, f"{what} contains an unpaired surrogate (\\ud800-\\udfff)") from None


def check_json_limits(data: Any) -> None:
    """Raise ValidationFailed naming the first place where `data` breaks a limit of the API's input.

    Also refuses non-finite numbers: JSON has no NaN or Infinity, but a number too large for a
    double (1e400) parses to inf, which PostgreSQL's jsonb and the templates cannot hold.
    Iterative, so a document at the parser's own nesting limit cannot exhaust the Python stack.
    """
    max_depth = settings.ORDINAUT_MAX_JSON_DEPTH
    max_items = settings.ORDINAUT_MAX_JSON_ITEMS
    stack: list[tuple[Any, list[str | int]]] = [(data, [])]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, str):
            _check_string(value, parts, "string")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            message = "is not a finite number (JSON numbers must fit a double: at most about 1.8e308)"
            raise ValidationFailed.on(_path(parts), message)
        if not isinstance(value, (Mapping, list)):
            continue
        if len(parts) >= max_depth:
            message = f"nesting is deeper than {max_depth} levels (ORDINAUT_MAX_JSON_DEPTH)"
            raise ValidationFailed.on(_path(parts), message)
        if len(value) > max_items:
            message = f"has {len(value)} items; the limit is {max_items} (ORDINAUT_MAX_JSON_ITEMS)"
            raise ValidationFailed.on(_path(parts), message)
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_string(key, [*parts, key], "key")
                stack.append((item, [*parts, key]))
        else:
            stack.extend((item, [*parts, index]) for index, item in enumerate(value))


def read_limited(stream: IO[bytes]) -> bytes:
    """The whole stream, or PayloadTooLarge as soon as it passes ORDINAUT_MAX_BODY_BYTES.

    The middleware refuses a too-large Content-Length; this catches a body longer than declared.
    """
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(READ_CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge.over_limit()
        chunks.append(chunk)
    return b"".join(chunks)


class JSONParser(parsers.JSONParser):
    """Strict JSON in UTF-8 with the limits in docs/configuration.md; every violation is a clear 400."""

    def parse(self, stream: IO[bytes], media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = read_limited(stream)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationFailed(f"Request body is not valid UTF-8 (byte {exc.start}).") from None
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise ValidationFailed(
                f"Request body nests deeper than {settings.ORDINAUT_MAX_JSON_DEPTH} levels (ORDINAUT_MAX_JSON_DEPTH)."
            ) from None
        except ValueError as exc:
            raise ValidationFailed(f"Request body is not valid JSON: {exc}") from None
        check_json_limits(data)
        return data
