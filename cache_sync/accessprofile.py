"""Access profiles (docs/design.md section 5.5): what a worker's CMD imported, first use
first, recorded by the import hook, pushed as one small store object, and read by the next
cold pull of ``packages/`` as its need order.

A profile is a hint: it changes the order in which files are fetched, never which files or
when a distribution counts as placed. So whatever a stored profile holds (nothing, another
version's, a torn or hostile one), the pull places the same area; a profile that does not
decode is ignored, with a line in ``run``'s log, never an error. Pure: ``run`` does the one
GET and the one PUT (``lifecycle._learned_order``, ``_push_profile``).

The record (``CACHE_SYNC_PROFILE_FILE``, written by ``_importhook/sitecustomize.py`` in
CMD's interpreter and in every Python process it starts) has one line per first use:
``m NAME`` for an import of the top-level module NAME, ``d NAME`` for a metadata lookup of
the distribution NAME. A profile's need list holds module names as they are and distributions
as ``dist:<canonical name>`` (``unitplan.DIST``), in that order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

from cache_sync.unitplan import DIST, canonical

PREFIX = "profiles/"
ENV_VAR = "CACHE_SYNC_PROFILE_FILE"
FORMAT = "cache-sync-profile"
VERSION = 1
MAX_BYTES = 256 << 10  # a stored profile, and the part of a record that is read
MAX_NAMES = 4096
_DIST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,198}[a-z0-9])?")


class ProfileError(ValueError):
    """A stored profile that is not one: ignored by the pull that reads it."""


def key_for(cmd: Sequence[str]) -> str:
    """The store key of CMD's profile: a digest of its argv, so endpoints with different
    commands sharing a store keep theirs apart, and the argv (which may hold a token) is
    never written anywhere."""
    digest = hashlib.sha256(json.dumps(list(cmd)).encode()).hexdigest()[:16]
    return f"{PREFIX}{digest}.json"


def valid(entry: str) -> bool:
    if entry.startswith(DIST):
        return _DIST_NAME.fullmatch(entry[len(DIST):]) is not None
    return len(entry) <= 200 and entry.isidentifier()


def parse_record(data: bytes) -> list[str]:
    """The need list of a record: first use first, each entry once, at most ``MAX_NAMES``;
    a line that is not ``m NAME`` or ``d NAME`` (a torn last line, anything else) is
    skipped."""
    out: list[str] = []
    seen: set[str] = set()
    for line in data[:MAX_BYTES].decode("utf-8", "replace").split("\n")[:-1]:
        kind, _, name = line.partition(" ")
        entry = name if kind == "m" else DIST + canonical(name) if kind == "d" else ""
        if entry and entry not in seen and valid(entry):
            seen.add(entry)
            out.append(entry)
            if len(out) >= MAX_NAMES:
                break
    return out


def encode(need: Sequence[str]) -> bytes:
    return json.dumps({"format": FORMAT, "version": VERSION, "need": list(need)},
                      separators=(",", ":")).encode()


def decode(data: bytes) -> list[str]:
    """The need list of a stored profile; ProfileError when it is not a profile of this
    version, or too big, or names something that is no module or distribution name."""
    if len(data) > MAX_BYTES:
        raise ProfileError(f"{len(data)} bytes, more than {MAX_BYTES}")
    try:
        doc = json.loads(data)
    except ValueError:
        raise ProfileError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileError("not a cache-sync access profile")
    if doc.get("version") != VERSION:
        raise ProfileError(f"version {doc.get('version')!r}; this cache-sync reads {VERSION}")
    need = doc.get("need")
    if not isinstance(need, list) or len(need) > MAX_NAMES:
        raise ProfileError(f"'need' is not a list of at most {MAX_NAMES} names")
    bad = [n for n in need if not isinstance(n, str) or not valid(n)]
    if bad:
        raise ProfileError(f"'need' holds {len(bad)} entries that are no module or "
                           f"distribution name (first: {str(bad[0])[:40]!r})")
    return need


def combine(learned: Iterable[str], scanned: Iterable[str]) -> list[str]:
    """The need order of a cold pull: a recorded start's, then what CMD's source imports
    that the recorded start did not (code added since), each once."""
    out = list(dict.fromkeys(learned))
    seen = set(out)
    out += [n for n in dict.fromkeys(scanned) if n not in seen]
    return out


def worth_pushing(recorded: Sequence[str], stored: Sequence[str] | None) -> bool:
    """Whether a worker's record should replace the stored profile: it holds something, and
    the stored profile does not already order every name of it the same way (the record is
    no subsequence of it). So a worker stopped early, or one whose start took a shorter
    path, learned nothing new, and the N workers of a fleet do not all rewrite one object."""
    if not recorded:
        return False
    if stored is None:
        return True
    rest = iter(stored)
    return not all(name in rest for name in recorded)  # ``in`` consumes ``rest`` up to it
