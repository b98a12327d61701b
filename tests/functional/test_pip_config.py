"""uv sees the configuration pip would (issue 11 item 8): the same pip.conf + PIP_* variables
give the same install with `--installer pip` and `--installer uv` (real installers, local
indexes). The two cases are the issue's measured failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

INSTALLERS = ["pip", pytest.param("uv", marks=pytest.mark.skipif(
    shutil.which("uv") is None, reason="no uv"))]


def configured_env(tmp_path, conf: str) -> dict:
    """pip reads a per-user pip.conf (not /dev/null); this machine's global files are out
    of the way (XDG_CONFIG_DIRS), except /etc/pip.conf which pip always reads."""
    env = hermetic_env(tmp_path / "w")
    del env["PIP_CONFIG_FILE"]
    user_conf = tmp_path / "xdg" / "pip" / "pip.conf"
    user_conf.parent.mkdir(parents=True)
    user_conf.write_text(conf)
    env.update({"XDG_CONFIG_HOME": str(tmp_path / "xdg"),
                "XDG_CONFIG_DIRS": str(tmp_path / "no-global")})
    return env


def install(env: dict, installer: str, spec: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "install", "--no-push",
                        "--no-import-check", "--installer", installer, spec], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["installer"] == installer
    return report["units"][0]


@pytest.mark.parametrize("installer", INSTALLERS)
def test_no_index_and_find_links_from_the_environment_beat_pip_conf(tmp_path, installer):
    good = tmp_path / "good"
    make_wheel(good, "beta", "1.2", {"beta.py": "X = 1\n"})
    other = tmp_path / "other"
    make_wheel(other, "alpha", "1.0", {"alpha/__init__.py": ""})
    env = configured_env(tmp_path, f"[global]\nfind-links = {other}\n")
    env.update({"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(good)})
    unit = install(env, installer, "beta")
    assert unit["status"] == "installed" and unit["new"] == {"beta": "1.2"}


@pytest.mark.parametrize("installer", INSTALLERS)
def test_extra_index_url_from_the_environment_replaces_pip_confs(tmp_path, installer):
    w = tmp_path / "wheels"
    main = build_index(tmp_path / "i1", [make_wheel(w / "1", "beta", "1.2", {"beta.py": ""})])
    cuda = build_index(tmp_path / "i2", [make_wheel(w / "2", "gamma", "2.0+cu1",
                                                    {"gamma.py": "V = 'cuda'\n"})])
    conf = build_index(tmp_path / "i3", [make_wheel(w / "3", "gamma", "1.0",
                                                    {"gamma.py": "V = 'conf'\n"})])
    with serve(main) as s1, serve(cuda) as s2, serve(conf) as s3:
        env = configured_env(tmp_path, f"[global]\nextra-index-url = {s3.url}/simple\n")
        env.update({"PIP_INDEX_URL": f"{s1.url}/simple",
                    "PIP_EXTRA_INDEX_URL": f"{s2.url}/simple"})
        unit = install(env, installer, "gamma")
        assert unit["new"] == {"gamma": "2.0+cu1"}
        assert s3.requests == []  # pip.conf's extra index is overridden, as pip does it
        assert s2.requests
    assert "cuda" in (tmp_path / "w" / "cache" / "packages" / "gamma.py").read_text()
