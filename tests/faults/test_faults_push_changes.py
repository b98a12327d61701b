"""A push tolerates a tree that changes under it (issue 13, case 5; docs/design.md section 4).

A downloader runs next to the push the way ``huggingface_hub`` does: it writes
``<name>.incomplete`` in pieces and renames it to ``<name>`` when done, over and over. Every push
must succeed with a consistent snapshot (every file it names reassembles to its hash); files
that vanished or kept changing are left out (or at their old state) with a warning, and the
next push, once the downloader stopped, picks up the rest.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from tests.support import REPO, crash
from tests.support import faultkit as fk
from tests.support.waits import wait_until, wait_until_count

KILLPOINT = str(REPO / "tests" / "support" / "_killpoint")


class Downloader(threading.Thread):
    def __init__(self, area: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.dir = area / "hub" / "blobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.seed = seed
        self.renamed = 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            part = self.dir / f"{self.seed}-{n}.incomplete"
            with open(part, "wb") as f:
                for _ in range(4):  # grows while the push may be reading it
                    f.write(os.urandom(24_000))
                    f.flush()
                    time.sleep(0.005)
            part.rename(self.dir / f"{self.seed}-{n}")
            self.renamed += 1


def test_files_renamed_during_a_push_five_tries(tmp_path):
    ws = fk.workspace(tmp_path)
    crash.write_tree(ws.area(), {f"pkg/{i}.py": f"v = {i}\n".encode() for i in range(50)})
    ws.run("push")
    # First, the race made certain: the push is held after it listed the tree and before it
    # read a file (support/_killpoint), and the download is renamed then.
    part = ws.area() / "hub" / "blobs" / "held.incomplete"
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(50_000))
    release = tmp_path / "release"
    held = {**ws.env, "FAULTS_PAUSE_AT": "push:scanned", "FAULTS_PAUSE_FILE": str(release),
            "PYTHONPATH": os.pathsep.join([KILLPOINT, ws.env.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(ws.argv("push"), env=held, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: Path(f"{release}.reached").exists()
                          or proc.poll() is not None, 60)
        part.rename(part.with_suffix(""))
        release.touch()
        _out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "held.incomplete vanished" in err, err
    fk.audit_store(ws)
    # Then a downloader racing the push freely, five times: whatever the push meets, every
    # push succeeds and every snapshot is consistent.
    for attempt in range(5):
        dl = Downloader(ws.area(), attempt)
        dl.start()
        try:
            wait_until_count(lambda: dl.renamed, 3, 10)  # noqa: B023
            r = ws.run("push", ok=False)
        finally:
            dl.stop.set()
            dl.join(10)
        assert r.returncode == 0, f"try {attempt}: exit {r.returncode}\n{r.stderr}"
        fk.audit_store(ws)  # every snapshot names only what reassembles to its hash
    # The downloader has stopped: the next push takes the rest, a fresh worker gets it all.
    ws.run("push")
    fresh = ws.sibling("fresh")
    fresh.run("pull")
    assert crash.diff_trees(ws.tree(), fresh.tree(), mtime=True) == []
