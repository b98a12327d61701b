"""The CLI imports only the command it runs (an up-to-date pull must not pay for importing
install, run and doctor), and still finds the command behind any global option."""

from __future__ import annotations

import pytest

from cache_sync.cli.main import COMMANDS, _command_in, build_parser


@pytest.mark.parametrize("argv,command", [
    (["pull"], "pull"),
    (["--root", "/r", "pull", "packages"], "pull"),
    (["-v", "--json", "--remote", "s3://b/p", "push"], "push"),
    (["--root=/r", "--progress", "off", "status"], "status"),
    (["--areas", "pull", "log"], "log"),  # an option's value named like a command
    (["--help"], None),
    ([], None),
    (["frobnicate"], None),  # not a command: the full parser says what is valid
])
def test_the_command_is_found_without_parsing(argv, command):
    assert _command_in(argv) == command


def test_one_command_parser_parses_like_the_full_one():
    full, all_modules = build_parser()
    one, modules = build_parser("pull")
    assert set(all_modules) == set(COMMANDS) and list(modules) == ["pull"]
    argv = ["--root", "/r", "pull", "--dry-run", "packages", "--transfers", "4"]
    assert vars(full.parse_args(argv)) == vars(one.parse_args(argv))


def test_run_result_is_typed_and_its_json_keeps_its_shape():
    """run's results hold typed reports (AreaReport, the bootstrap's Report); ``--json``
    prints them as before: lists of dicts, the models part of a bootstrap nested under
    ``bootstrap.models``."""
    from cache_sync.bootstrap import Report
    from cache_sync.lifecycle import RunResult
    from cache_sync.results import AreaReport

    r = RunResult(0, pulled=[AreaReport("packages", "pull", files=3)],
                  pushed=[AreaReport("models", "push", up_to_date=True)],
                  bootstrap=Report(role="installed"), bootstrap_models=Report(role="waited"))
    doc = r.to_dict()
    assert doc["pulled"][0]["area"] == "packages" and doc["pulled"][0]["files"] == 3
    assert doc["pushed"][0]["up_to_date"] is True
    assert doc["bootstrap"]["role"] == "installed"
    assert doc["bootstrap"]["models"]["role"] == "waited"
    assert "bootstrap_models" not in doc
    assert RunResult(1).to_dict()["bootstrap"] == {}


def test_gc_report_is_typed_and_its_json_keeps_its_shape(tmp_path, capsys):
    """``gc`` returns a GcReport; ``gc --json`` prints its fields in order, the keys scripts
    read since the first gc (``snapshots_deleted``, ``objects_deleted``, ...) unchanged."""
    import json

    from cache_sync.cli.main import main
    from cache_sync.results import GcReport

    area = tmp_path / "root" / "deps"
    area.mkdir(parents=True)
    (area / "a.txt").write_text("a")
    argv = ["--root", str(tmp_path / "root"), "--remote", f"file://{tmp_path}/store"]
    assert main([*argv, "push", "deps"]) == 0
    capsys.readouterr()
    assert main([*argv, "--json", "gc", "--keep", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == [
        "dry_run", "objects_deleted", "bytes_deleted", "objects_spared", "delete_phase",
        "snapshots_kept", "snapshots_deleted", "objects_marked", "bytes_marked",
        "objects_in_grace", "objects_referenced", "marks_pending", "delete_after_seconds",
        "versions_deleted", "version_bytes_deleted", "versions_note"]
    assert doc == GcReport(**doc).to_dict()
    assert doc["snapshots_kept"] == 1 and doc["objects_referenced"] >= 1
    assert doc["dry_run"] is False and doc["delete_phase"] == "no ripe mark"
