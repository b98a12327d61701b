"""The access profile's pure core (docs/design.md section 5.5): the hook's record read back,
a stored profile decoded or refused, the need order combined, and when a record replaces the
stored profile."""

from __future__ import annotations

import json

import pytest

from cache_sync import accessprofile as ap
from cache_sync.unitplan import UnitPlan, need_rank


def test_a_record_reads_back_first_use_first_each_once_torn_and_odd_lines_skipped():
    data = (b"m torch\nd Tokenizers\nm numpy\nm torch\nd tokenizers\nx what\nm not-a-name\n"
            b"d ../etc\nm \xff\nm f5_tts\nm half")  # the last line torn by a kill
    assert ap.parse_record(data) == ["torch", "dist:tokenizers", "numpy", "f5_tts"]
    many = b"".join(b"m m%d\n" % i for i in range(ap.MAX_NAMES + 10))
    assert len(ap.parse_record(many)) == ap.MAX_NAMES


def test_a_profile_round_trips_and_anything_else_is_refused_by_name():
    need = ["runpod", "torch", "dist:transformers"]
    assert ap.decode(ap.encode(need)) == need
    for data, says in [
        (b"[1, 2]", "not a cache-sync access profile"),
        (json.dumps({"format": "x", "version": 1, "need": []}).encode(), "not a cache-sync"),
        (json.dumps({"format": ap.FORMAT, "version": 2, "need": []}).encode(), "version 2"),
        (json.dumps({"format": ap.FORMAT, "version": 1, "need": "torch"}).encode(),
         "not a list"),
        (json.dumps({"format": ap.FORMAT, "version": 1, "need": [1]}).encode(),
         "no module or distribution name"),
        (json.dumps({"format": ap.FORMAT, "version": 1, "need": ["dist:Bad_Name"]}).encode(),
         "no module or distribution name"),
        (b"{" * 10, "not JSON"),
        (b" " * (ap.MAX_BYTES + 1), "more than"),
    ]:
        with pytest.raises(ap.ProfileError, match=says):
            ap.decode(data)


def test_the_need_order_is_the_recorded_start_then_what_the_source_adds():
    assert ap.combine(["torch", "dist:numpy", "f5_tts"], ["f5_tts", "vocos", "torch"]) == [
        "torch", "dist:numpy", "f5_tts", "vocos"]
    assert ap.combine([], ["a", "a", "b"]) == ["a", "b"]


def test_a_record_replaces_the_stored_profile_only_when_it_orders_something_new():
    stored = ["runpod", "torch", "dist:numpy", "f5_tts"]
    assert not ap.worth_pushing([], None)
    assert ap.worth_pushing(["torch"], None)
    assert not ap.worth_pushing(stored, stored)
    assert not ap.worth_pushing(["runpod", "f5_tts"], stored)  # a shorter path, same order
    assert ap.worth_pushing(["f5_tts", "torch"], stored)  # another order
    assert ap.worth_pushing([*stored, "vocos"], stored)  # a name it lacks


def test_the_key_is_a_digest_of_the_argv_which_is_never_stored():
    a = ap.key_for(["python", "-m", "handler", "--token", "s3cr3t"])
    assert a == ap.key_for(["python", "-m", "handler", "--token", "s3cr3t"])
    assert a != ap.key_for(["python", "-m", "handler"])
    assert a.startswith(ap.PREFIX) and "s3cr3t" not in a


def test_a_metadata_lookup_ranks_its_distribution_alone():
    plan = UnitPlan(modules={"transformers": {"transformers", "tokenizers"}},
                    dists={"transformers", "tokenizers", "numpy"})
    assert need_rank(plan, ["dist:numpy", "transformers", "dist:absent"]) == {
        "numpy": 0, "transformers": 1, "tokenizers": 1}
