"""Unit-aware merges (cache_sync.units): an installed distribution in packages/ and a Hugging
Face repo in models/ come whole from one side, never file by file."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_sync.history import History
from cache_sync.layout import SnapshotRef, snapshot_key
from cache_sync.snapshot import Entry, Snapshot, check_tree, merge3
from cache_sync.units import _area_path, canonical_name, merger

CONTENTS: dict[str, bytes] = {}  # digest -> bytes: what the merge's reader can read


def read(e: Entry) -> bytes | None:
    return CONTENTS.get(e.digest)


def fe(path: str, text: str, mode: int = 0o644) -> Entry:
    data = text.encode()
    digest = hashlib.sha256(data).hexdigest()
    CONTENTS[digest] = data
    return Entry(path, "f", mode, 1, len(data), digest)


def de(path: str) -> Entry:
    return Entry(path, "d", 0o755, 1)


def le(path: str, target: str) -> Entry:
    return Entry(path, "l", 0o777, 1, target=target)


def tree(*entries: Entry) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for e in entries:
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            q = "/".join(parts[:i])
            out.setdefault(q, de(q))
        out[e.path] = e
    return out


def installed(name: str, version: str, modules: dict[str, str] | None = None,
              record_extra: tuple[str, ...] = (), legacy: bool = False) -> list[Entry]:
    """A ``pip install --target`` layout: the package's files plus a dist-info whose RECORD
    lists them; ``legacy``: an ``.egg-info`` whose installed-files.txt lists them, as pip's
    pre-wheel installs wrote (paths relative to the egg-info)."""
    modules = modules if modules is not None else {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{name}/v{version.replace('.', '_')}.py": "x = 1\n",
    }
    if legacy:
        egg = f"{name}-{version}-py3.11.egg-info"
        own = ("PKG-INFO", "top_level.txt", "installed-files.txt")
        return [*(fe(p, t) for p, t in modules.items()),
                fe(f"{egg}/PKG-INFO", f"Name: {name}\nVersion: {version}\n"),
                fe(f"{egg}/top_level.txt", f"{name}\n"),
                fe(f"{egg}/installed-files.txt",
                   "".join(f"../{p}\n" for p in modules) + "".join(f"{o}\n" for o in own))]
    meta = f"{name}-{version}.dist-info"
    files = [fe(p, t) for p, t in modules.items()]
    files.append(fe(f"{meta}/METADATA", f"Name: {name}\nVersion: {version}\n"))
    listed = [*modules, *record_extra, f"{meta}/METADATA", f"{meta}/RECORD"]
    files.append(fe(f"{meta}/RECORD", "".join(f"{p},,\n" for p in listed)))
    return files


def merge_packages(base, ours, theirs):
    return merger("packages", read)(base, ours, theirs)


def dist_infos(t: dict[str, Entry], name: str) -> list[str]:
    return [p for p in t if "/" not in p and p.endswith((".dist-info", ".egg-info"))
            and canonical_name(p) == canonical_name(name)]


def version_of(t: dict[str, Entry], name: str) -> str | None:
    init = t.get(f"{name}/__init__.py")
    return CONTENTS[init.digest].decode().split("'")[1] if init else None


# --- packages/: examples of docs/design.md 5.1 -------------------------------------------
def test_concurrent_installs_take_one_version_whole():
    base = tree(fe("other.py", "o"))
    ours = {**base, **tree(*installed("mypkg", "1.0"))}
    theirs = {**base, **tree(*installed("mypkg", "2.0"))}
    out = merge_packages(base, ours, theirs)
    assert dist_infos(out, "mypkg") == ["mypkg-2.0.dist-info"]
    assert version_of(out, "mypkg") == "2.0"
    assert "mypkg/v1_0.py" not in out and "mypkg/v2_0.py" in out
    # The file-level merge is what the issue reproduced: two dist-infos, code of both.
    mixed = merge3(base, ours, theirs)
    assert len(dist_infos(mixed, "mypkg")) == 2 and "mypkg/v1_0.py" in mixed
    check_tree(out)


def test_concurrent_upgrades_from_one_base():
    base = tree(*installed("mypkg", "1.0"))
    ours = tree(*installed("mypkg", "1.5"))
    theirs = tree(*installed("mypkg", "2.0"))
    assert merge_packages(base, ours, theirs) == merge_packages({}, {}, theirs)
    # Ours is the later head: ours whole.
    out = merge_packages(base, theirs, ours)
    assert dist_infos(out, "mypkg") == ["mypkg-1.5.dist-info"] and version_of(out, "mypkg") == "1.5"


def test_uninstall_versus_edit_resolves_to_one_whole_state():
    base = tree(*installed("mypkg", "1.0"), fe("keep.txt", "k"))
    uninstalled = tree(fe("keep.txt", "k"))
    edited = dict(base)
    edited["mypkg/v1_0.py"] = fe("mypkg/v1_0.py", "x = 2  # edited\n")
    # The edit is later: the package stays, whole, with the edit.
    out = merge_packages(base, uninstalled, edited)
    assert out == edited
    # The uninstall is later: nothing of the package stays (no namespace-package remnant).
    out = merge_packages(base, edited, uninstalled)
    assert out == uninstalled
    assert not any(p.startswith("mypkg") for p in merge_packages(base, edited, uninstalled))


def test_stray_files_in_an_owned_directory_belong_to_the_unit():
    base = tree(*installed("mypkg", "1.0"))
    ours = tree(*installed("mypkg", "1.0"), fe("mypkg/__pycache__/v1_0.cpython-311.pyc", "pyc"))
    theirs = tree(*installed("mypkg", "2.0"))
    out = merge_packages(base, ours, theirs)
    assert not any("__pycache__" in p for p in out)  # a .pyc of 1.0 next to 2.0 is a mix


def test_a_head_that_did_less_of_the_same_change_does_not_split_the_unit():
    """A later head whose changes to a unit are all in the earlier one too (a half-applied
    upgrade, e.g. a pull cut short) yields the earlier, complete version whole."""
    base = tree(*installed("mypkg", "1.0"))
    full = tree(*installed("mypkg", "2.0"))
    half = dict(base)
    half["mypkg/__init__.py"] = full["mypkg/__init__.py"]  # one file of 2.0, metadata of 1.0
    assert merge_packages(base, full, half) == full
    assert merge_packages(base, half, full) == full


def test_one_side_changes_only_keep_both_sides():
    base = tree(*installed("a", "1.0"), *installed("b", "1.0"))
    ours = tree(*installed("a", "2.0"), *installed("b", "1.0"))
    theirs = tree(*installed("a", "1.0"), *installed("b", "3.0"))
    out = merge_packages(base, ours, theirs)
    assert version_of(out, "a") == "2.0" and version_of(out, "b") == "3.0"
    assert dist_infos(out, "a") == ["a-2.0.dist-info"] and dist_infos(out, "b") == ["b-3.0.dist-info"]


def test_namespace_directory_shared_by_two_distributions_merges_by_record():
    def ns(name: str, version: str) -> list[Entry]:
        return installed(name, version, {f"google/{name}/__init__.py": f"__version__ = '{version}'"})
    base = tree(*ns("auth", "1.0"), *ns("protobuf", "1.0"))
    ours = tree(*ns("auth", "2.0"), *ns("protobuf", "1.0"))
    theirs = tree(*ns("auth", "1.0"), *ns("protobuf", "2.0"))
    out = merge_packages(base, ours, theirs)
    assert dist_infos(out, "auth") == ["auth-2.0.dist-info"]
    assert dist_infos(out, "protobuf") == ["protobuf-2.0.dist-info"]
    assert "google/auth/__init__.py" in out and "google/protobuf/__init__.py" in out


def test_scripts_recorded_outside_the_target_are_part_of_the_unit():
    base = tree(fe("bin/keep", "k"))
    ours = {**base, **tree(*installed("tool", "1.0", record_extra=("../../../bin/tool",)),
                           fe("bin/tool", "#!1"))}
    theirs = {**base, **tree(*installed("tool", "2.0"))}  # 2.0 has no script
    out = merge_packages(base, ours, theirs)
    assert "bin/tool" not in out and "bin/keep" in out


def test_unreadable_record_falls_back_to_the_name():
    base: dict[str, Entry] = {}
    ours = tree(*installed("mypkg", "1.0"))
    theirs = tree(*installed("mypkg", "2.0"))
    out = merger("packages", None)(base, ours, theirs)
    assert dist_infos(out, "mypkg") == ["mypkg-2.0.dist-info"] and "mypkg/v1_0.py" not in out


def test_egg_info_with_installed_files():
    def egg(version: str) -> list[Entry]:
        meta = f"legacy-{version}-py3.11.egg-info"
        return [fe("legacy.py", f"v = {version!r}"), fe(f"{meta}/PKG-INFO", version),
                fe(f"{meta}/installed-files.txt", "../legacy.py\nPKG-INFO\ninstalled-files.txt\n")]
    out = merge_packages({}, tree(*egg("1.0")), tree(*egg("2.0")))
    assert [p for p in out if p.endswith(".egg-info")] == ["legacy-2.0-py3.11.egg-info"]
    assert CONTENTS[out["legacy.py"].digest] == b"v = '2.0'"


def test_canonical_names():
    assert canonical_name("Foo_Bar-1.0.dist-info") == "foo-bar"
    assert canonical_name("foo.bar-2-py3.11.egg-info") == "foo-bar"
    assert canonical_name("foo_bar.egg-info") == "foo-bar"


def test_other_areas_keep_file_level_merges():
    base: dict[str, Entry] = {}
    ours = tree(*installed("mypkg", "1.0"))
    theirs = tree(*installed("mypkg", "2.0"))
    assert merger("pip", read)(base, ours, theirs) == merge3(base, ours, theirs)


# --- models/: a Hugging Face repo --------------------------------------------------------
def hf_repo(rev: str, files: dict[str, str], repo: str = "hub/models--org--name") -> list[Entry]:
    out = [fe(f"{repo}/refs/main", rev)]
    for name, text in files.items():
        blob = hashlib.sha256(text.encode()).hexdigest()[:40]
        out.append(fe(f"{repo}/blobs/{blob}", text))
        out.append(le(f"{repo}/snapshots/{rev}/{name}", f"../../blobs/{blob}"))
    return out


def test_hf_repo_refs_and_snapshots_come_from_one_side():
    base = tree(*hf_repo("r0", {"config.json": "c0"}))
    ours = tree(*hf_repo("r0", {"config.json": "c0"}), *hf_repo("r1", {"config.json": "c1"}))
    theirs = tree(*hf_repo("r0", {"config.json": "c0"}), *hf_repo("r2", {"config.json": "c2"}))
    out = merger("models", read)(base, ours, theirs)
    repo = "hub/models--org--name"
    assert CONTENTS[out[f"{repo}/refs/main"].digest] == b"r2"
    assert f"{repo}/snapshots/r1" not in out and f"{repo}/snapshots/r2/config.json" in out
    # Blobs merge freely: the loser's blob stays (content-addressed, harmless).
    assert sum(1 for p in out if "/blobs/" in p) == 3
    # file-level would keep both new snapshot dirs
    assert f"{repo}/snapshots/r1" in merge3(base, ours, theirs)


def test_hf_blob_deleted_by_one_side_but_named_by_the_winner_stays():
    repo = "hub/models--org--name"
    base = tree(*hf_repo("r0", {"w.bin": "w0"}))
    deleted = tree(de("hub"))  # ours removed the whole repo (delete-cache)
    theirs = tree(*hf_repo("r0", {"w.bin": "w0"}), *hf_repo("r1", {"w.bin": "w1"}))
    out = merger("models", read)(base, deleted, theirs)
    for p, e in out.items():
        if e.kind == "l":
            assert e.target.replace("../../", f"{repo}/") in out, p
    assert out == theirs
    # The deletion is later: the repo is gone whole, blobs too.
    assert merger("models", read)(base, theirs, deleted) == deleted


def test_hf_two_repos_changed_on_different_sides_keep_both():
    a, b = "hub/models--o--a", "hub/models--o--b"
    base = tree(*hf_repo("r0", {"x": "a0"}, a), *hf_repo("r0", {"x": "b0"}, b))
    ours = tree(*hf_repo("r1", {"x": "a1"}, a), *hf_repo("r0", {"x": "b0"}, b))
    theirs = tree(*hf_repo("r0", {"x": "a0"}, a), *hf_repo("r1", {"x": "b1"}, b))
    out = merger("models", read)(base, ours, theirs)
    assert CONTENTS[out[f"{a}/refs/main"].digest] == b"r1"
    assert CONTENTS[out[f"{b}/refs/main"].digest] == b"r1"
    assert f"{a}/snapshots/r0" not in out and f"{b}/snapshots/r0" not in out


# --- properties ---------------------------------------------------------------------------
NAMES = ("alpha", "beta", "gamma")
LEGACY = "gamma"  # installed the pre-wheel way: an .egg-info with installed-files.txt
# A distribution's state on one side: None (not installed) or (version, edits, stray pyc).
state_st = st.none() | st.tuples(st.sampled_from(["1.0", "2.0", "3.0"]), st.integers(0, 2),
                                  st.booleans())
world_st = st.fixed_dictionaries({n: state_st for n in NAMES})


def build(world: dict, extra: tuple[str, ...] = ()) -> dict[str, Entry]:
    entries: list[Entry] = [fe(p, p) for p in extra]
    for name, s in world.items():
        if s is None:
            continue
        version, edits, pyc = s
        files = installed(name, version, legacy=name == LEGACY)
        if edits:
            files = [fe(e.path, f"edit {edits}") if e.path.endswith("__init__.py") else e
                     for e in files]
        if pyc:
            files.append(fe(f"{name}/__pycache__/__init__.cpython-311.pyc", version))
        entries.extend(files)
    return tree(*entries)


def unit_paths(t: dict[str, Entry], name: str) -> dict[str, Entry]:
    return {p: e for p, e in t.items() if p == name or p.startswith(f"{name}/")
            or (p.split("/")[0].endswith((".dist-info", ".egg-info"))
                and canonical_name(p.split("/")[0]) == name)}


def pick(ub: dict[str, Entry], uo: dict[str, Entry], ut: dict[str, Entry]) -> dict[str, Entry]:
    """The oracle for one unit (design 5.1): theirs whole when it changed something in a way
    ours did not, else ours whole (ours' changes then include all of theirs)."""
    theirs_own = any(ut.get(p) != ub.get(p) and ut.get(p) != uo.get(p)
                     for p in ub.keys() | ut.keys())
    return ut if theirs_own else uo


def assert_consistent(out: dict[str, Entry]) -> None:
    check_tree(out)
    for name in NAMES:
        infos = dist_infos(out, name)
        assert len(infos) <= 1, infos
        files = [p for p in out if p.startswith(f"{name}/")]
        assert not files or infos, f"{files} without metadata"
        if infos:  # the code's version is the metadata's
            v = infos[0].split("-")[1].removesuffix(".dist")
            assert f"{name}/v{v.replace('.', '_')}.py" in out
            assert [p for p in out if p.startswith(f"{name}/v")] == [f"{name}/v{v.replace('.', '_')}.py"]


@settings(max_examples=150, deadline=None)
@given(world_st, world_st, world_st, st.sets(st.sampled_from(["x.txt", "y.txt", "z/q"])),
       st.sets(st.sampled_from(["x.txt", "y.txt", "z/q"])))
def test_property_merge_takes_each_distribution_whole(b, o, t, extra_o, extra_t):
    base, ours, theirs = build(b), build(o, tuple(extra_o)), build(t, tuple(extra_t))
    out = merge_packages(base, ours, theirs)
    assert_consistent(out)
    for name in NAMES:
        want = pick(unit_paths(base, name), unit_paths(ours, name), unit_paths(theirs, name))
        assert unit_paths(out, name) == want, name
    # Paths outside every unit keep the file-level merge.
    plain = {p for p in out if p in ("x.txt", "y.txt", "z", "z/q")}
    assert plain == {p for p in merge3(base, ours, theirs) if p in ("x.txt", "y.txt", "z", "z/q")}


@settings(max_examples=60, deadline=None)
@given(world_st, st.lists(world_st, min_size=2, max_size=4))
def test_property_history_of_many_heads_takes_the_latest_change(b, sides):
    """N workers push from one base: each distribution comes whole from the latest head (by
    id) that changed it in a way the heads before it did not, else as merged before it."""
    base_id = "20260101T000000000000Z-00000000"
    snaps = {base_id: Snapshot(base_id, "packages", (), build(b))}
    refs = [SnapshotRef("packages", base_id, (), snapshot_key("packages", base_id, ()))]
    for i, w in enumerate(sides):
        sid = f"20260101T00000{i + 1}000000Z-0000000{i}"
        snaps[sid] = Snapshot(sid, "packages", (base_id,), build(w))
        refs.append(SnapshotRef("packages", sid, (base_id,),
                                snapshot_key("packages", sid, (base_id,))))
    _, out = History(refs).current(lambda r: snaps[r.id], merger("packages", read))
    assert_consistent(out)
    for name in NAMES:
        base_unit = unit_paths(snaps[base_id].entries, name)
        want = unit_paths(snaps[sorted(snaps)[1]].entries, name)
        for sid in sorted(snaps)[2:]:
            want = pick(base_unit, want, unit_paths(snaps[sid].entries, name))
        assert unit_paths(out, name) == want, name


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["r0", "r1", "r2", None]), min_size=3, max_size=3))
def test_property_hf_links_never_dangle(revs):
    def side(rev):
        return tree(de("hub"), *(hf_repo(rev, {"w": f"w-{rev}", "c": "shared"}) if rev else ()))
    base, ours, theirs = (side(r) for r in revs)
    out = merger("models", read)(base, ours, theirs)
    check_tree(out)
    for p, e in out.items():
        if e.kind == "l":
            assert e.target.replace("../../", "hub/models--org--name/") in out, (revs, p)
    snaps = {p.split("/")[3] for p in out if p.count("/") >= 3 and "/snapshots/" in p}
    assert len(snaps) <= 1, snaps


@pytest.mark.parametrize("raw, rel_to, want", [
    ("a/x.py", "", "a/x.py"),  # as pip writes it: taken as is
    (" a/x.py ", "", "a/x.py"),
    ("a/./x.py", "", "a/x.py"),  # not normal: normalised, never taken as is
    ("a//x.py", "", "a/x.py"),
    ("a/sub/../x.py", "", "a/x.py"),
    ("./a/x.py", "", "a/x.py"),
    (".hidden", "", ".hidden"),
    ("a/", "", "a"),
    ("../../../bin/tool", "", "bin/tool"),  # pip --target's scripts
    ("../../../lib/x", "", None),
    ("..", "", None),
    (".", "", None),
    ("/abs/x", "", None),
    ("a\\x", "", None),
    ("", "", None),
    ("x.py", "m.egg-info", "m.egg-info/x.py"),  # installed-files.txt: relative to its dir
    ("../m/x.py", "m.egg-info", "m/x.py"),
])
def test_a_record_path_becomes_its_normal_area_path(raw, rel_to, want):
    assert _area_path(raw, rel_to) == want
