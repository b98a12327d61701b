"""The version purge plan (cache_sync/versions.py, docs/design.md 6.3): what every reader sees
is the same before, between and after its two steps, and nothing hidden is left."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cache_sync.versions import VersionInfo, plan_purge


def visible(vs: list[VersionInfo]) -> dict[str, str]:
    """key -> version id a plain GET returns (the latest version, unless it is a marker).
    After a latest version is deleted, S3 makes the newest remaining one latest."""
    out: dict[str, str] = {}
    for key in {v.key for v in vs}:
        mine = [v for v in vs if v.key == key]
        latest = next((v for v in mine if v.latest), None) or (mine[-1] if mine else None)
        if latest is not None and not latest.delete_marker:
            out[key] = latest.version_id
    return out


def apply(vs: list[VersionInfo], gone: list[VersionInfo]) -> list[VersionInfo]:
    """Delete ``gone`` by id; a key whose latest went has its newest remaining as latest."""
    ids = {(v.key, v.version_id) for v in gone}
    left = [v for v in vs if (v.key, v.version_id) not in ids]
    out = []
    for key in dict.fromkeys(v.key for v in left):
        mine = [v for v in left if v.key == key]
        has_latest = any(v.latest for v in mine)
        out += [VersionInfo(v.key, v.version_id, v.latest or (not has_latest and i == len(mine) - 1),
                            v.delete_marker, v.size) for i, v in enumerate(mine)]
    return out


# One key's history, oldest first: each step a write (data) or a delete (marker).
history_st = st.lists(st.booleans(), min_size=1, max_size=5)


def build(histories: list[list[bool]]) -> list[VersionInfo]:
    vs = []
    for k, h in enumerate(histories):
        for i, is_write in enumerate(h):
            vs.append(VersionInfo(f"k{k}", f"v{i}", i == len(h) - 1, not is_write,
                                  10 if is_write else 0))
    return vs


@settings(max_examples=300, deadline=None)
@given(st.lists(history_st, min_size=1, max_size=5))
def test_readers_see_the_same_store_at_every_step_and_nothing_hidden_is_left(histories):
    vs = build(histories)
    before = visible(vs)
    purge = plan_purge(vs)
    mid = apply(vs, purge.first)
    assert visible(mid) == before  # a kill between the steps shows the same store
    after = apply(mid, purge.then)
    assert visible(after) == before
    assert all(v.latest and not v.delete_marker for v in after)  # nothing hidden
    assert purge.bytes == sum(v.size for v in vs if not v.latest)


def test_a_latest_marker_goes_only_in_the_second_step():
    vs = [VersionInfo("k", "1", False, False, 5), VersionInfo("k", "2", True, True)]
    purge = plan_purge(vs)
    assert [v.version_id for v in purge.first] == ["1"]
    assert [v.version_id for v in purge.then] == ["2"]
    # Deleted first, the marker would bring version 1 back into view.
    assert visible(apply(vs, purge.then)) == {"k": "1"}


def test_a_listing_without_the_latest_touches_nothing_of_that_key():
    assert plan_purge([VersionInfo("k", "1", False, False, 5)]).first == []
