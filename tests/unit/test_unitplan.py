"""The placement plan of a cold packages/ pull (cache_sync.unitplan, design §5.4): which
paths go in place with which distribution, in what order, and what each import waits for."""

from __future__ import annotations

import hashlib

from cache_sync.snapshot import Entry
from cache_sync.unitplan import WHOLE_AREA, metadata_first, module_name, plan_units

DATA: dict[str, bytes] = {}


def fe(path: str, text: str = "") -> Entry:
    data = (text or path).encode()
    digest = hashlib.sha256(data).hexdigest()
    DATA[digest] = data
    return Entry(path, "f", 0o644, 1, len(data), digest)


def de(path: str) -> Entry:
    return Entry(path, "d", 0o755, 1)


def record(*paths: str) -> str:
    return "".join(f"{p},,\n" for p in paths)


def tree() -> dict[str, Entry]:
    es = [
        de("a"), fe("a/__init__.py"), fe("a/x.py"), de("a/__pycache__"),
        fe("a/__pycache__/x.cpython-311.pyc"),
        de("a-1.0.dist-info"),
        fe("a-1.0.dist-info/RECORD", record("a/__init__.py", "a/x.py", "../../../bin/a-cli",
                                            "a-1.0.dist-info/RECORD")),
        de("bin"), fe("bin/a-cli"), fe("bin/b-cli"),
        fe("b.py"), de("b-2.0.dist-info"),
        fe("b-2.0.dist-info/RECORD", record("b.py", "../../../bin/b-cli")),
        de("nvidia"), fe("nvidia/__init__.py"), de("nvidia/c1"), fe("nvidia/c1/lib.so"),
        de("nvidia/c2"), fe("nvidia/c2/lib.so", "other"),
        de("nvidia_c1-1.dist-info"), fe("nvidia_c1-1.dist-info/RECORD", record("nvidia/c1/lib.so")),
        de("nvidia_c2-1.dist-info"), fe("nvidia_c2-1.dist-info/RECORD", record("nvidia/c2/lib.so")),
        de("l"), fe("l/__init__.py"), Entry("l/link", "l", 0o777, 1, target="__init__.py"),
        de("l-1.dist-info"), fe("l-1.dist-info/RECORD", record("l/__init__.py", "l/link")),
        fe("stray.py"),
    ]
    return {e.path: e for e in es}


def read(e: Entry) -> bytes | None:
    return DATA.get(e.digest)


def test_roots_are_the_highest_paths_a_distribution_owns_alone_code_first():
    plan = plan_units(tree(), read)
    roots = {u.key: u.roots for u in plan.units}
    assert roots == {
        "a": ("a", "bin/a-cli", "a-1.0.dist-info"),
        "b": ("b.py", "bin/b-cli", "b-2.0.dist-info"),
        "nvidia-c1": ("nvidia/c1", "nvidia_c1-1.dist-info"),
        "nvidia-c2": ("nvidia/c2", "nvidia_c2-1.dist-info"),
    }  # l has a symlink: the final phase makes those, so l waits for the end of the pull
    files = {u.key: u.files for u in plan.units}
    assert files["a"] == {"a/__init__.py", "a/x.py", "a/__pycache__/x.cpython-311.pyc",
                          "bin/a-cli", "a-1.0.dist-info/RECORD"}


def test_a_module_waits_for_every_unit_below_it_and_for_the_end_if_anything_is_late():
    plan = plan_units(tree(), read)
    assert plan.modules == {"a": {"a"}, "b": {"b"}, "l": {WHOLE_AREA},
                            "nvidia": {"nvidia-c1", "nvidia-c2", WHOLE_AREA},  # its __init__
                            "stray": {WHOLE_AREA}}
    assert plan.pending(["a", "nvidia-c1"]) == (["b", "l", "nvidia", "stray"],
                                                ["b", "l", "nvidia-c2"])
    assert plan.dists == {"a", "b", "l", "nvidia-c1", "nvidia-c2"}


def test_metadata_is_fetched_first_also_when_it_duplicates_a_file_elsewhere():
    t = tree()
    lic = fe("a/LICENSE", "MIT")
    dup = fe("a-1.0.dist-info/LICENSE", "MIT")
    fetch = [*t.values(), lic]
    first, rest = metadata_first([e for e in fetch if e.kind == "f"], {lic.digest: [dup]})
    assert "a/LICENSE" in {e.path for e in first}
    assert {e.path for e in first} >= {"a-1.0.dist-info/RECORD", "b-2.0.dist-info/RECORD"}
    assert not any(e.path.split("/")[0].endswith(".dist-info") for e in rest)


def test_module_names():
    assert [module_name(t, k) for t, k in [
        ("torch", "d"), ("six.py", "f"), ("_C.cpython-311-x86_64-linux-gnu.so", "f"),
        ("torch-2.9.dist-info", "d"), ("bin", "d"), ("README.txt", "f"), ("a-b", "d"),
        ("x.pth", "f")]] == ["torch", "six", "_C", None, None, None, None, None]


def test_a_module_also_waits_for_what_its_distribution_requires_transitively():
    """torch loads nvidia-*'s CUDA libraries by path: `import torch` must wait for them too.
    Requirements for an extra are not waited for; a required unit placed only at the end
    makes the module wait for the end."""
    t = tree()
    meta = ("Metadata-Version: 2.1\nName: a\nVersion: 1.0\nRequires-Dist: B>=2\n"
            "Requires-Dist: nvidia_c1 ; extra == 'cuda'\n\nRequires-Dist: stray-in-body\n")
    t["a-1.0.dist-info/METADATA"] = fe("a-1.0.dist-info/METADATA", meta)
    t["b-2.0.dist-info/METADATA"] = fe(
        "b-2.0.dist-info/METADATA", "Name: b\nRequires-Dist: nvidia-c2 (>=1)\n")
    t["nvidia_c2-1.dist-info/METADATA"] = fe(
        "nvidia_c2-1.dist-info/METADATA", "Name: nvidia-c2\nRequires-Dist: l; python_version>'3'\n")
    plan = plan_units(t, read)
    assert plan.modules["a"] == {"a", "b", "nvidia-c2", WHOLE_AREA}  # l is late
    assert plan.modules["b"] == {"b", "nvidia-c2", WHOLE_AREA}
    del t["nvidia_c2-1.dist-info/METADATA"]
    plan = plan_units(t, read)
    assert plan.modules["a"] == {"a", "b", "nvidia-c2"}


def test_a_file_several_distributions_list_goes_with_the_first_of_them():
    """Every nvidia-* wheel ships nvidia/__init__.py: it is a root of each, so they are all
    placed early and `import nvidia` waits for them, not for the end of the pull."""
    t = tree()
    t["nvidia_c1-1.dist-info/RECORD"] = fe("nvidia_c1-1.dist-info/RECORD", record(
        "nvidia/__init__.py", "nvidia/c1/lib.so"))
    t["nvidia_c2-1.dist-info/RECORD"] = fe("nvidia_c2-1.dist-info/RECORD", record(
        "nvidia/__init__.py", "nvidia/c2/lib.so"))
    plan = plan_units(t, read)
    roots = {u.key: u.roots for u in plan.units}
    assert roots["nvidia-c1"] == ("nvidia/__init__.py", "nvidia/c1", "nvidia_c1-1.dist-info")
    assert roots["nvidia-c2"] == ("nvidia/__init__.py", "nvidia/c2", "nvidia_c2-1.dist-info")
    assert plan.modules["nvidia"] == {"nvidia-c1", "nvidia-c2"}
