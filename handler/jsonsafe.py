"""Replies that can always be posted: text from a job made safe to echo, results JSON-safe.

JSON accepts a lone surrogate escape (``"\\ud800"``) and Python decodes it into a ``str`` that
UTF-8 cannot encode. Echoed into a reply, it made runpod's result post raise, and the job
stayed "in progress" until the endpoint's timeout. Everything a reply echoes goes through
:func:`echo`, and every reply through :func:`json_safe` as the last step.
"""

from __future__ import annotations

from typing import Any

ECHO_CHARS = 60  # longest piece of caller input repeated in a reply


def clean(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry written as a ``\\udXXX`` escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def echo(value: Any, limit: int = ECHO_CHARS) -> str:
    """A short, printable, encodable rendering of caller input for an error message."""
    text = repr(value)  # escapes control characters, NULs and surrogates
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return clean(text)


def json_safe(value: Any) -> Any:
    """``value`` with every string (keys included) encodable as UTF-8."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
