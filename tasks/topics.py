"""Event topics: the characters a topic is made of, and the three patterns built from them."""

from __future__ import annotations

import re

# Letters, digits and . _ : - (the "-" closes each character class below, so it stays literal).
TOPIC_CHARS = "A-Za-z0-9._:"
TOPIC_MAX_CHARS = 200


def _pattern(wildcards: str) -> str:
    return f"^[{TOPIC_CHARS}{wildcards}-]{{1,{TOPIC_MAX_CHARS}}}$"


# A published topic (POST /events, orchestrator.emit_event).
TOPIC_REGEX = _pattern("")
# GET /events?topic=: exact, or a glob with * and ? (turned into SQL, which has no [...]).
TOPIC_FILTER_REGEX = _pattern("*?")
# An event task's topic: matched with fnmatch, so [...] classes are allowed too.
TOPIC_GLOB_REGEX = _pattern(r"*?\[\]")

TOPIC = re.compile(TOPIC_REGEX)
TOPIC_FILTER = re.compile(TOPIC_FILTER_REGEX)
TOPIC_GLOB = re.compile(TOPIC_GLOB_REGEX)
