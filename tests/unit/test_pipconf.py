"""pip's configuration precedence, resolved for uv (pipconf.py): command line > PIP_* >
[install] > [global]; PIP_CONFIG_FILE > site > per-user > global; lists replaced, not merged."""

from __future__ import annotations

import pytest

from cache_sync.errors import ConfigError
from cache_sync.pipconf import PYPI, config_files, sources, uv_flags


def layout(tmp_path, **files):
    """HOME, XDG dirs and a site prefix under tmp_path; files: global/user/legacy/site."""
    where = {"global": tmp_path / "xdg-dirs" / "pip" / "pip.conf",
             "user": tmp_path / "xdg-home" / "pip" / "pip.conf",
             "legacy": tmp_path / "home" / ".pip" / "pip.conf",
             "site": tmp_path / "prefix" / "pip.conf",
             "named": tmp_path / "named.conf"}
    for kind, text in files.items():
        where[kind].parent.mkdir(parents=True, exist_ok=True)
        where[kind].write_text(text)
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg-home"),
           "XDG_CONFIG_DIRS": str(tmp_path / "xdg-dirs")}
    return env, str(tmp_path / "prefix"), where


def test_files_in_pips_order_and_the_environment_wins(tmp_path):
    env, prefix, where = layout(
        tmp_path,
        **{"global": "[global]\nindex-url = http://global/simple\nfind-links = /g\n",
           "user": "[global]\nindex-url = http://user/simple\n",
           "legacy": "[global]\nindex-url = http://legacy/simple\n",
           "site": "[global]\nextra-index-url = http://site/a http://site/b\n"})
    assert config_files(env, prefix) == [str(where["global"]), "/etc/pip.conf",
                                         str(where["legacy"]), str(where["user"]),
                                         str(where["site"])]
    s = sources(env, prefix=prefix)
    assert s.index_urls == ["http://user/simple", "http://site/a", "http://site/b"]
    assert s.find_links == ["/g"]
    # PIP_* beats every file; a list from the environment replaces the files' list
    env2 = {**env, "PIP_EXTRA_INDEX_URL": "http://env/x", "PIP_INDEX_URL": "http://env/i"}
    assert sources(env2, prefix=prefix).index_urls == ["http://env/i", "http://env/x"]


def test_install_section_beats_global_and_named_file_beats_site_and_skips_user(tmp_path):
    env, prefix, where = layout(
        tmp_path, user="[install]\nno-index = yes\n[global]\nno-index = no\n",
        site="[global]\nfind-links = /site\n", named="[global]\nfind-links = /named\n")
    assert sources(env, prefix=prefix).no_index  # [install] over [global], any file
    named = {**env, "PIP_CONFIG_FILE": str(where["named"])}
    s = sources(named, prefix=prefix)
    assert not s.no_index and s.find_links == ["/named"]  # user file skipped, named > site
    assert sources({**env, "PIP_CONFIG_FILE": "/dev/null"}, prefix=prefix).index_urls == [PYPI]


def test_the_issues_two_failures_as_uv_flags(tmp_path):
    good, other = tmp_path / "good", tmp_path / "other"
    good.mkdir()
    other.mkdir()
    env, prefix, _ = layout(tmp_path, user=f"[global]\nfind-links = {other}\n"
                            "extra-index-url = http://conf/extra\n")
    flags = uv_flags(sources({**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(good)},
                             prefix=prefix))
    assert flags[:3] == ["--no-index", "--find-links", str(good)] and str(other) not in flags
    flags = uv_flags(sources({**env, "PIP_EXTRA_INDEX_URL": "http://cuda/whl"},
                             prefix=prefix))
    assert flags[flags.index("--extra-index-url") + 1] == "http://cuda/whl"
    assert "http://conf/extra" not in flags
    assert flags[-2:] == ["--index-strategy", "unsafe-best-match"]


def test_command_line_options_apply_as_pip_applies_a_requirements_file(tmp_path):
    env, prefix, _ = layout(tmp_path, user="[global]\nextra-index-url = http://conf/x\n")
    s = sources(env, ["--index-url", "http://file/i", "--extra-index-url", "http://file/e",
                      "--find-links", "/f", "--pre"], prefix=prefix)
    assert s.index_urls == ["http://file/i", "http://file/e"] and s.find_links == ["/f"]
    assert s.pre and sources(env, ["--no-index"], prefix=prefix).index_urls == []
    with pytest.raises(ConfigError, match="not a boolean"):
        sources({**env, "PIP_NO_INDEX": "maybe"}, prefix=prefix)
