"""The stat index (issue 13, case 6): a push re-reads a file whose size, mtime, inode or ctime
changed, and only those; docs/design.md section 4 step 1."""

from __future__ import annotations

import os

from tests.support.helpers import cli_env, run_cli, run_json


def test_same_size_edit_with_restored_mtime_is_pushed(tmp_path):
    """An in-place edit (same inode) of the same size whose writer put the old mtime back:
    only its ctime changed. It must be pushed, and a fresh pull must get the new bytes."""
    env = cli_env(f"file://{tmp_path}/store")
    root = tmp_path / "root"
    f = root / "packages" / "conf.txt"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"value = 1\n")
    (root / "packages" / "other.txt").write_bytes(b"untouched")
    run_cli(["--root", str(root), "push"], env)
    st = os.stat(f)
    with open(f, "r+b") as fh:  # in place: same inode
        fh.write(b"value = 2\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(f)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns,
                                                                 st.st_ino)
    out = run_json(["--root", str(root), "push"], env)["areas"][0]
    assert not out["up_to_date"] and out["files"] == 1, out  # read that file, and only it
    fresh = tmp_path / "fresh"
    run_cli(["--root", str(fresh), "pull"], env)
    assert (fresh / "packages" / "conf.txt").read_bytes() == b"value = 2\n"
    # And a pulled tree is clean: its index holds the stat after the pull's renames.
    again = run_json(["--root", str(fresh), "push"], env)["areas"][0]
    assert again["up_to_date"] and again["files"] == 0, again
