"""Pure pieces of install: budgets, failure classification, key lines, spec parsing."""

from __future__ import annotations

import pytest

from cache_sync.errors import ConfigError
from cache_sync.installer import is_transient, key_lines
from cache_sync.reqs import parse_file, parse_spec


def test_budgets_default_big_and_per_spec():
    assert parse_spec("rich").budget(300, 600) == 300
    assert parse_spec("torch==2.6.0").budget(300, 600) == 600
    assert parse_spec("nvidia-cudnn-cu12").budget(300, 600) == 600
    assert parse_spec("Flash_Attn").budget(300, 600) == 600  # names are canonicalised
    assert parse_spec("torch", timeout=1200).budget(300, 600) == 1200


def test_wheel_url_spec_has_name_and_version():
    s = parse_spec("https://x/v1/flash_attn-2.8.3+cu12torch2.6cxx11abiFALSE-cp310-cp310-"
                   "linux_x86_64.whl")
    assert s.wheel == ("flash-attn", "2.8.3+cu12torch2.6cxx11abifalse")
    with pytest.raises(ConfigError):
        parse_spec("https://x/not-a-wheel-name.whl")


@pytest.mark.parametrize("output,transient", [
    ("Could not fetch URL http://h/simple/x/: HTTPConnectionPool(host='h', port=1): Max "
     "retries exceeded (Caused by ResponseError('too many 503 error responses')) - skipping\n"
     "ERROR: No matching distribution found for x", True),
    ("Could not fetch URL http://h/simple/x/: 404 Client Error: Not Found - skipping\n"
     "ERROR: No matching distribution found for x", False),
    ("  Caused by: HTTP status server error (503 Service Unavailable) for url", True),
    ("WARNING: Retrying (Retry(total=0)) after connection broken by 'ReadTimeoutError'", True),
    ("ERROR: ResolutionImpossible: for help visit https://pip.pypa.io", False),
    # healthy debug lines that mention connections are not failures
    ("Starting new HTTPS connection (1): pypi.org:443\nERROR: No matching distribution", False),
])
def test_failure_classification(output, transient):
    assert is_transient(output) is transient


def test_key_lines_prefer_error_lines():
    out = "Collecting x\n  Downloading x.whl\nERROR: one\nnoise\nERROR: two\n"
    assert key_lines(out) == ["ERROR: one", "ERROR: two"]
    assert key_lines("a\nb\nc\nd\ne\n", limit=2) == ["d", "e"]


def test_requirements_file_nesting_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.txt").write_text("-c constraints.txt\nrich>=13\n")
    (tmp_path / "top.txt").write_text("-r sub/base.txt\n--find-links=wheels\n"
                                      "pyyaml \\\n  ==6.0.2  # cache-sync: optional\n")
    s = parse_file(tmp_path / "top.txt")
    assert [x.text for x in s.specs] == ["rich>=13", "pyyaml   ==6.0.2"]
    assert s.specs[1].optional
    assert s.options == ["-c", str(tmp_path / "sub" / "constraints.txt"),
                         "--find-links", str(tmp_path / "wheels")]
