"""Fleet configuration through the CLI: B2_BUCKET alone names the store (never the container's
own disk), a RunPod worker without a store refuses to start, and `env`/`run` create every
directory they export."""

from __future__ import annotations

import subprocess
import sys

from tests.support.pkgindex import hermetic_env


def cli(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cache_sync", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def b2_env(tmp_path, moto, bucket: str, **extra: str) -> dict:
    """A worker configured the Backblaze way: B2_* variables, no CACHE_SYNC_REMOTE."""
    env = hermetic_env(tmp_path)
    del env["CACHE_SYNC_REMOTE"]
    env.update({"B2_BUCKET": bucket, "B2_APPLICATION_KEY_ID": moto.access_key,
                "B2_APPLICATION_KEY": moto.secret_key, "AWS_REGION": moto.region,
                "CACHE_SYNC_PROGRESS": "off", **extra})
    return env


def test_b2_bucket_alone_is_the_remote(moto, tmp_path):
    bucket = moto.make_bucket()
    env = b2_env(tmp_path, moto, bucket, B2_PREFIX="workers", B2_ENDPOINT=moto.endpoint)
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "w.bin").write_bytes(b"weights" * 1000)
    p = cli(env, "push", "models")
    assert p.returncode == 0, p.stderr
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith("workers/") for k in keys), keys
    # a second worker reaching the same bucket by its explicit URL sees the push
    other = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "w2"),
             "CACHE_SYNC_REMOTE": f"s3://{bucket}/workers",
             "CACHE_SYNC_ENDPOINT_URL": moto.endpoint}
    assert cli(other, "pull", "models").returncode == 0
    assert (tmp_path / "w2" / "models" / "w.bin").read_bytes() == b"weights" * 1000
    p = cli(env, "--json", "env", "--explain")
    assert '"source": "B2_BUCKET"' in p.stdout and moto.secret_key not in p.stdout


def test_b2_bucket_without_endpoint_is_refused_with_the_fix(moto, tmp_path):
    env = b2_env(tmp_path, moto, "some-bucket")
    p = cli(env, "status")
    assert p.returncode == 2, p.stderr
    assert "B2_BUCKET is set" in p.stderr and "B2_REGION" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and moto.secret_key not in p.stderr
    # the region alone derives Backblaze's endpoint
    p = cli({**env, "B2_REGION": "us-west-004"}, "env", "CACHE_SYNC_ENDPOINT_URL")
    assert p.stdout.strip() == "https://s3.us-west-004.backblazeb2.com", p.stderr


def test_runpod_worker_without_a_store_refuses_to_start(tmp_path):
    env = hermetic_env(tmp_path)
    del env["CACHE_SYNC_REMOTE"]
    env.update({"RUNPOD_POD_ID": "pod-abc", "CACHE_SYNC_PROGRESS": "off",
                "CACHE_SYNC_RUNPOD_VOLUME": str(tmp_path / "runpod-volume")})
    marker = tmp_path / "child-ran"
    p = cli(env, "run", "--", "touch", str(marker))
    assert p.returncode == 2, p.stderr
    assert "RUNPOD_POD_ID" in p.stderr and "CACHE_SYNC_REMOTE" in p.stderr
    assert "CACHE_SYNC_ALLOW_LOCAL=1" in p.stderr and not marker.exists()
    ep = {k: v for k, v in env.items() if k != "RUNPOD_POD_ID"}
    ep["RUNPOD_ENDPOINT_ID"] = "ep-1"
    p = cli(ep, "run", "--", "touch", str(marker))
    assert p.returncode == 2 and "RUNPOD_ENDPOINT_ID" in p.stderr and not marker.exists()
    # explicit opt-in
    p = cli({**env, "CACHE_SYNC_ALLOW_LOCAL": "1"}, "run", "--", "touch", str(marker))
    assert p.returncode == 0, p.stderr
    assert marker.exists()
    marker.unlink()
    # the cache root on the network volume: the root itself survives the container
    (tmp_path / "runpod-volume").mkdir()
    on_vol = {**env, "CACHE_SYNC_ROOT": str(tmp_path / "runpod-volume" / "cache")}
    p = cli(on_vol, "run", "--", "touch", str(marker))
    assert p.returncode == 0, p.stderr
    marker.unlink()
    # a configured store
    p = cli({**env, "CACHE_SYNC_REMOTE": f"file://{tmp_path}/store"}, "run", "--", "touch",
            str(marker))
    assert p.returncode == 0, p.stderr and marker.exists()


EXPORTED = ("TMPDIR", "PIP_BUILD_DIR", "PIP_CACHE_DIR", "UV_CACHE_DIR", "PIP_TARGET",
            "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "TORCH_HOME", "XDG_CACHE_HOME")


def test_env_and_run_create_every_directory_they_export(tmp_path):
    env = {**hermetic_env(tmp_path), "CACHE_SYNC_PROGRESS": "off"}
    p = cli(env, "--json", "env")
    assert p.returncode == 0, p.stderr
    import json

    exported = json.loads(p.stdout)
    missing = [v for v in EXPORTED if not __import__("os").path.isdir(exported[v])]
    assert missing == []
    # run, on a fresh root: the child can write straight into each exported directory
    env["CACHE_SYNC_ROOT"] = str(tmp_path / "fresh")
    script = "; ".join(f'echo x > "${v}/probe-{v}"' for v in EXPORTED)
    p = cli(env, "run", "--no-push", "--", "sh", "-ec", script)
    assert p.returncode == 0, p.stderr
