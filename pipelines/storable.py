"""What a PostgreSQL jsonb column accepts: JSON with finite numbers and no NUL or surrogate in its strings."""

from __future__ import annotations

import json
import math
import re
from typing import Any

# In JSON text written with ensure_ascii (json.dumps' default), a NUL or a surrogate can only
# appear as one of these escapes. Finding none proves the value clean without walking it; a hit
# may be innocent (an escaped backslash before "u0000", an emoji's surrogate pair), so it is
# confirmed on the value itself.
_SUSPECT_RE = re.compile(r"\\u(?:0000|d[89a-f])")


def storable_json(value: Any, *, prefix: str = "") -> str:
    """`value` as compact JSON text that PostgreSQL stores as jsonb. ValueError naming where
    (`with.text`, `output.items.2`) when it holds NaN or Infinity, or a string or key with a NUL
    character or a surrogate code point (PostgreSQL refuses them: a lone surrogate is invalid
    JSON text to it); TypeError when it is not JSON at all."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(_first_problem(value, prefix) or str(exc)) from None
    except RecursionError:
        raise ValueError(f"{prefix or '(root)'}: nests too deeply to be stored") from None
    if _SUSPECT_RE.search(text):
        problem = _first_problem(value, prefix)
        if problem is not None:
            raise ValueError(problem)
    return text


def storable_text(text: str) -> str:
    """A message made storable: NUL and surrogate code points become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text


def _first_problem(value: Any, prefix: str) -> str | None:
    """The first unstorable place inside a JSON value, in document order. Iterative: the value
    may nest as deep as json.dumps allowed."""
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        path, item = stack.pop()
        where = path or "(root)"
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                return f"{where}: {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where}: {item} is not a JSON number (JSON has no NaN or Infinity)"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                name = str(key)
                problem = _string_problem(name)
                if problem:
                    return f"{where}: a key {problem}"
                children.append((f"{path}.{name}" if path else name, child))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(f"{path}.{i}" if path else str(i), child) for i, child in enumerate(item)]))
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL (\\u0000) character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a surrogate code point (\\ud800-\\udfff)"
    return None
