"""Settings: flag beats CACHE_SYNC_* beats standard variables beats default."""

from __future__ import annotations

import pytest

from cache_sync.config import Settings
from cache_sync.errors import ConfigError


def test_precedence_and_defaults(tmp_path):
    env = {"HOME": str(tmp_path), "CACHE_SYNC_ROOT": "/env/root", "AWS_ENDPOINT_URL": "http://std:1",
           "CACHE_SYNC_ENDPOINT_URL": "http://mine:2", "CACHE_SYNC_RUNPOD_VOLUME": str(tmp_path / "none")}
    s = Settings.from_env(env)
    assert str(s.root) == "/env/root" and s.endpoint_url == "http://mine:2"
    assert s.remote == f"file://{tmp_path}/.cache/cache-sync/store"
    s2 = Settings.from_env(env, root="/flag/root", endpoint_url="http://flag:3")
    assert str(s2.root) == "/flag/root" and s2.endpoint_url == "http://flag:3"
    assert dict((k, src) for k, _, src in s2.explain())["root"] == "flag"
    bare = Settings.from_env({"HOME": str(tmp_path), "CACHE_SYNC_RUNPOD_VOLUME": str(tmp_path / "no")})
    assert str(bare.root) == "/tmp/runpod-cache"
    (tmp_path / "vol").mkdir()
    vol = Settings.from_env({"HOME": str(tmp_path), "CACHE_SYNC_RUNPOD_VOLUME": str(tmp_path / "vol")})
    assert vol.root == tmp_path / "vol" / "cache"


def test_backblaze_variables():
    env = {"B2_APPLICATION_KEY_ID": "kid", "B2_APPLICATION_KEY": "ksecret",
           "B2_REGION": "us-west-004", "CACHE_SYNC_REMOTE": "s3://bucket/p"}
    s = Settings.from_env(env)
    assert s.endpoint_url == "https://s3.us-west-004.backblazeb2.com"
    assert s.access_key_id == "kid" and s.secret_access_key == "ksecret"
    assert "ksecret" not in repr(s) and all("ksecret" not in v for _, v, _ in s.explain())
    with pytest.raises(ConfigError, match="B2_APPLICATION_KEY is not set"):
        Settings.from_env({"B2_APPLICATION_KEY_ID": "kid"})


@pytest.mark.parametrize("env, needle", [
    ({"CACHE_SYNC_TRANSFERS": "0"}, "below the minimum"),
    ({"CACHE_SYNC_CHUNK_SIZE": "huge"}, "not a size"),
    ({"CACHE_SYNC_AREAS": "packages,../x"}, "not a valid area"),
    ({"CACHE_SYNC_REMOTE": "gs://b"}, "not a supported URL"),
    ({"CACHE_SYNC_ENDPOINT_URL": "minio:9000"}, "has no scheme"),
    ({"CACHE_SYNC_JSON": "maybe"}, "not a boolean"),
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


# --- one table (config.KNOBS) drives every plain setting ------------------------------------
from cache_sync import snapshot  # noqa: E402
from cache_sync.config import KNOBS, MAX_SMALL_FILE  # noqa: E402
from tests.support import REPO  # noqa: E402

BAD = {"int": "many", "float": "soon", "size": "huge", "bool": "maybe", "choice": "sideways"}
GOOD = {"int": "7", "float": "7.5", "size": "7M", "bool": "yes", "text": "/x"}


def test_every_knob_defaults_to_its_field_and_reads_its_variable(tmp_path):
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(Settings)}
    base = {"HOME": str(tmp_path), "CACHE_SYNC_RUNPOD_VOLUME": str(tmp_path / "none")}
    bare = Settings.from_env(base)
    for name, knob in KNOBS.items():
        assert name in fields, f"KNOBS names {name!r}, which Settings lacks"
        assert getattr(bare, name) == fields[name].default, name
        if knob.kind == "choice":
            raw = want = knob.choices[-1]
        else:
            raw = GOOD[knob.kind]
            want = {"int": 7, "float": 7.5, "size": 7 << 20, "bool": True, "text": "/x"}[
                knob.kind]
        got = getattr(Settings.from_env({**base, f"CACHE_SYNC_{name.upper()}": raw}), name)
        assert got == want, (name, got)
        assert getattr(Settings.from_env(base, **{name: raw}), name) == want, name  # a flag


def test_every_knob_refuses_a_bad_value_naming_its_variable():
    for name, knob in KNOBS.items():
        if knob.kind == "text":
            continue
        var = f"CACHE_SYNC_{name.upper()}"
        with pytest.raises(ConfigError, match=var):
            Settings.from_env({var: BAD[knob.kind]})


def test_knobs_bounds_and_docs():
    with pytest.raises(ConfigError, match="above the maximum"):
        Settings.from_env({"CACHE_SYNC_SMALL_FILE": "16M"})
    # a packed member above the chunk threshold would be refused by every pull (design 3.2)
    assert MAX_SMALL_FILE == snapshot.SMALL_BLOB
    readme = (REPO / "README.md").read_text()
    assert [k for k in KNOBS if f"CACHE_SYNC_{k.upper()}" not in readme] == []
