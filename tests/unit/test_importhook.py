"""The import hook's finder in-process (docs/design.md sections 5.4, 5.5): it leaves
``sys.meta_path`` without making the import system skip the finder after it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys

from cache_sync import _importhook


def _hook():
    spec = importlib.util.spec_from_file_location("cs_hook_under_test",
                                                  _importhook.DIR / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Spy:
    def __init__(self) -> None:
        self.specs: list[str] = []
        self.dists: list[str] = []

    def find_spec(self, name, path=None, target=None):
        self.specs.append(name)

    def find_distributions(self, context=None):
        self.dists.append(getattr(context, "name", None))
        return iter(())


def test_the_finder_leaving_mid_lookup_skips_no_other_finder(tmp_path, monkeypatch):
    """The area is whole when the lookup comes: the waiting finder removes itself during
    the import system's walk of sys.meta_path, and the finder after it is still asked.
    Fails when it removes itself from the list being walked (the spy is skipped)."""
    hook = _hook()
    status = tmp_path / "ready.json"
    status.write_text(json.dumps({"pending": [], "ready": ["packages"], "failed": {}}))
    for lookup in ("import", "metadata"):
        wait, spy = hook.UnitWait(hook._Status(str(status))), Spy()
        monkeypatch.setattr(sys, "meta_path", [wait, spy, *sys.meta_path])
        if lookup == "import":
            assert importlib.util.find_spec("cs_no_such_module_anywhere") is None
            assert spy.specs == ["cs_no_such_module_anywhere"]
        else:
            try:
                importlib.metadata.version("cs-no-such-distribution")
            except importlib.metadata.PackageNotFoundError:
                pass
            assert spy.dists == ["cs-no-such-distribution"]
        assert wait not in sys.meta_path and spy in sys.meta_path


def test_the_recorder_writes_each_first_use_once_and_stops_at_the_records_bound(tmp_path):
    """One line per first use, the standard library and site's own lookups left out; once
    the record (every process's lines) holds what `run` reads, nothing more is written."""
    hook = _hook()
    record = tmp_path / "access.txt"
    rec = hook.Record(str(record))
    for name in ("torch", "json", "torch", "sitecustomize", "numpy"):
        rec.find_spec(name)
    rec.find_spec("torch.nn", path=["x"])  # a submodule: its top-level module was recorded
    list(rec.find_distributions(importlib.metadata.DistributionFinder.Context(
        name="Tokenizers")))
    assert record.read_text() == "m torch\nm numpy\nd tokenizers\n"
    record.write_bytes(b"m x\n" * (hook.Record.MAX_BYTES // 4))  # other processes' lines
    rec.find_spec("vocos")
    assert rec.off and record.stat().st_size == hook.Record.MAX_BYTES
    from cache_sync import accessprofile

    assert hook.Record.MAX_BYTES == accessprofile.MAX_BYTES
    assert hook.Record.LIMIT == accessprofile.MAX_NAMES
