"""Hostile jobs, tried as an attacker would, through runpod's local API server (/runsync) with
the light engine, against HTTP servers on 127.0.0.1 / 127.0.0.2 / ::1 only.

The worker allow-lists 127.0.0.2 (the stand-in for a public or allowed host); 127.0.0.1 plays
the worker's internal network. Every loopback spelling, private, link-local, multicast,
reserved and unspecified address is refused before any connection (the internal server must
see no request at all), redirects are re-checked on every hop, the connection goes to the
address that was checked (a resolver that changes its answer, planted with sitecustomize, is
never asked twice), one error text covers every URL failure, a slow server is cut at the
deadline, and the worker keeps answering meanwhile. Faults inside the engine, the health job
and the S3 upload reach the caller without a path, a bucket, an endpoint or a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostile_sites import URL_DEADLINE, Site, make_tls, open_sites
from tests.support.waits import wait_until
from tests.support.worker_helpers import api_worker, tone_b64, worker_env, write_light_model

pytestmark = pytest.mark.timeout(180)

@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Iterator[dict[str, Site]]:
    """The plain sites, plus `tls` on 127.0.0.2: HTTPS with a certificate for audio.test and
    127.0.0.2 from a throw-away CA (the worker trusts it through SSL_CERT_FILE)."""
    ca_file, context = make_tls(tmp_path_factory.mktemp("tls"), ["audio.test"], ["127.0.0.2"])
    tls = Site("127.0.0.2", tls=context)
    with open_sites() as all_sites:
        yield {**all_sites, "tls": tls, "ca_file": ca_file}  # type: ignore[dict-item]
    tls.close()


REBIND_HOOK = '''
import socket
import time
_real_getaddrinfo = socket.getaddrinfo
_asked = []
_STATIC = {"audio.test": "127.0.0.2", "wrong.test": "127.0.0.2"}

def getaddrinfo(host, port, *args, **kwargs):
    """rebind.test answers an allowed address first, the internal one afterwards;
    slow-dns.test takes 30 s; audio.test and wrong.test are 127.0.0.2."""
    if host == "rebind.test":
        _asked.append(host)
        host = "127.0.0.2" if len(_asked) == 1 else "127.0.0.1"
    elif host == "slow-dns.test":
        time.sleep(30)
    host = _STATIC.get(host, host)
    return _real_getaddrinfo(host, port, *args, **kwargs)

socket.getaddrinfo = getaddrinfo
'''


def _worker_env(tmp: Path, root: Path, **extra: str) -> dict[str, str]:
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(REBIND_HOOK)
    env = worker_env(root, tmp, {
        "HANDLER_ENGINE": "light",
        "HANDLER_ALLOW_URL_REF_AUDIO": "true",
        "HANDLER_URL_ALLOWLIST": "127.0.0.2",
        "HANDLER_URL_TIMEOUT": str(URL_DEADLINE),
        **extra,
    })
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    return env


MISSING_BUCKET = f"missing-bucket-{os.getpid()}"


@pytest.fixture(scope="module")
def worker(tmp_path_factory, sites, moto):
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "cache"
    write_light_model(root)
    env = _worker_env(tmp, root, **moto.env(), CACHE_SYNC_REMOTE=f"s3://{MISSING_BUCKET}/c",
                      SSL_CERT_FILE=str(sites["ca_file"]))
    with api_worker(env, tmp / "worker.log") as w:
        yield w


def job(ref_audio: str, **over: Any) -> dict[str, Any]:
    return {"text": "Hello.", "ref_audio": ref_audio, "ref_text": "A reference.", **over}


def url_error(worker, url: str) -> tuple[str, float]:
    start = time.monotonic()
    out = worker.runsync(job(url))
    took = time.monotonic() - start
    assert out["status"] == "FAILED", out
    assert out["error"].startswith("invalid input: ref_audio: could not use this URL"), out
    return out["error"], took


def test_allow_listed_server_is_fetched_also_through_a_redirect(worker, sites):
    for path in ("/ref.wav", "/to-ref"):
        out = worker.runsync(job(sites["public"].url(path)))
        assert out["status"] == "COMPLETED", (out, worker.output()[-2000:])
    assert sites["public"].hits[-3:] == ["/ref.wav", "/to-ref", "/ref.wav"]


BLOCKED = [
    "http://localhost:PORT/ref.wav",
    "http://LOCALHOST.:PORT/ref.wav",
    "http://127.0.0.1:PORT/ref.wav",
    "http://127.1:PORT/ref.wav",
    "http://2130706433:PORT/ref.wav",
    "http://0x7f.1:PORT/ref.wav",
    "http://0x7f000001:PORT/ref.wav",
    "http://0177.0.0.1:PORT/ref.wav",
    "http://[::ffff:127.0.0.1]:PORT/ref.wav",
    "http://[::ffff:7f00:1]:PORT/ref.wav",
    "http://[::1]:PORT/ref.wav",
    "http://[2002:7f00:1::]:PORT/ref.wav",  # 6to4 wrapping 127.0.0.1
    "http://0.0.0.0:PORT/ref.wav",
    "http://[::]:PORT/ref.wav",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]:PORT/ref.wav",
    "http://10.0.0.1:PORT/ref.wav",
    "http://172.16.0.1:PORT/ref.wav",
    "http://192.168.1.1:PORT/ref.wav",
    "http://100.64.0.1:PORT/ref.wav",
    "http://[fd00::1]:PORT/ref.wav",
    "http://224.0.0.1:PORT/ref.wav",
    "http://[ff02::1]:PORT/ref.wav",
    "http://240.0.0.1:PORT/ref.wav",
    "http://255.255.255.255:PORT/ref.wav",
    "http://user:pw@127.0.0.2:PORT/ref.wav",  # credentials in a URL: refused
    "http://127.0.0.2@127.0.0.1:PORT/ref.wav",  # the host is 127.0.0.1
]


def test_internal_addresses_in_every_spelling_are_refused_without_a_connection(worker, sites):
    port = str(sites["public"].port)
    errors = set()
    seen = len(worker.output())
    for url in BLOCKED:
        error, _ = url_error(worker, url.replace("PORT", port))
        errors.add(error)
    assert len(errors) == 1
    assert sites["internal"].hits == [] and sites["internal6"].hits == []
    log = worker.output()[seen:]
    # Refused before connecting: each URL is refused for its address or its credentials,
    # and none waited for a connection (no deadline ran out: 240.0.0.1 would hang there).
    refused = log.count("which is not on HANDLER_URL_ALLOWLIST") + log.count("credentials")
    assert refused >= len(BLOCKED) and "deadline of" not in log, log[-3000:]
    for reason in ("(loopback)", "(loopback: 127.0.0.1 embedded)", "(link-local)", "(private)",
                   "(multicast)", "(unspecified)", "(not globally routable)", "credentials"):
        assert reason in log, reason  # the log says why; the reply does not


def test_redirects_are_checked_on_every_hop(worker, sites):
    public = sites["public"]
    for path in ("/to-loopback", "/to-localhost", "/to-ftp", "/to-metadata", "/loop"):
        url_error(worker, public.url(path))
    assert sites["internal"].hits == [] and sites["internal6"].hits == []
    assert public.hits.count("/loop") == 4  # the first request and 3 redirects, no more
    assert "scheme 'ftp' is not http or https" in worker.output()


def test_connection_goes_to_the_checked_address_not_a_second_lookup(worker, sites):
    """sitecustomize makes rebind.test resolve to the allowed 127.0.0.2 once, then to
    127.0.0.1: a fetcher that looked the name up again to connect would reach the internal
    server. Host names are not on the allow-list; 127.0.0.2 is."""
    before = len(sites["public"].hits)
    out = worker.runsync(job(f"http://rebind.test:{sites['public'].port}/ref.wav"))
    assert out["status"] == "COMPLETED", (out, worker.output()[-2000:])
    assert sites["public"].hits[before:] == ["/ref.wav"]
    assert sites["internal"].hits == []


def test_https_connects_to_the_checked_address_and_verifies_the_url_host(worker, sites):
    """TLS goes to the pinned address with the URL's host as the name checked against the
    certificate: audio.test (resolved by the hook to 127.0.0.2) and 127.0.0.2 itself pass;
    wrong.test, the same server under a name its certificate lacks, is refused."""
    tls = sites["tls"]
    for host in ("audio.test", "127.0.0.2"):
        out = worker.runsync(job(f"https://{host}:{tls.port}/ref.wav"))
        assert out["status"] == "COMPLETED", (host, out, worker.output()[-2000:])
    url_error(worker, f"https://wrong.test:{tls.port}/ref.wav")
    assert "wrong.test" in worker.output() and "CERTIFICATE_VERIFY_FAILED" in worker.output()
    assert tls.hits == ["/ref.wav", "/ref.wav"]  # the refused handshake sent no request


def test_one_error_for_every_url_failure(worker, sites):
    """Refused port, HTTP 500, not a WAV, blocked address, blocked redirect: the caller gets
    the same text, so the worker cannot be used to map ports or services."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        closed = s.getsockname()[1]  # bound, never listening: connection refused
        errors = {
            "refused": url_error(worker, f"http://127.0.0.2:{closed}/ref.wav")[0],
            "http 500": url_error(worker, sites["public"].url("/500"))[0],
            "not a wav": url_error(worker, sites["public"].url("/notwav"))[0],
            "loopback": url_error(worker, sites["internal"].url("/ref.wav"))[0],
            "redirect": url_error(worker, sites["public"].url("/to-loopback"))[0],
        }
    assert len(set(errors.values())) == 1, errors
    assert "hunter2" not in json.dumps(errors) and "admin" not in json.dumps(errors)
    log = worker.output()
    assert "Connection refused" in log and "HTTP 500" in log and "not a WAV" in log


def test_slow_server_is_cut_at_the_deadline_while_the_worker_keeps_serving(worker, sites):
    results: dict[str, Any] = {}

    def slow(url: str) -> None:
        start = time.monotonic()
        out = worker.runsync(job(url), timeout=60)
        results[url.rsplit("/", 1)[-1]] = (out, time.monotonic() - start)

    urls = [sites["public"].url("/slow"), sites["public"].url("/slow-headers"),
            "http://slow-dns.test/dns"]  # the hook's resolver takes 30 s
    threads = [threading.Thread(target=slow, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    assert wait_until(lambda: {"/slow", "/slow-headers"} <= set(sites["public"].hits), 30)
    start = time.monotonic()
    health = worker.runsync({"health": True})
    health_s = time.monotonic() - start
    in_flight_at_health = len(results)
    start = time.monotonic()
    ordinary = worker.runsync(job(tone_b64(0.5)))
    ordinary_s = time.monotonic() - start
    in_flight_at_ordinary = len(results)
    for t in threads:
        t.join(60)
    print(f"\nhealth job during three slow fetches: {health_s:.3f} s; ordinary job: "
          f"{ordinary_s:.3f} s; slow downloads cut after "
          + ", ".join(f"{p} {took:.2f} s" for p, (_, took) in results.items()))
    assert health["status"] == "COMPLETED" and health["output"]["ready"] is True
    assert ordinary["status"] == "COMPLETED"
    # Not queued behind the slow jobs: both answered while none of the three had ended.
    assert in_flight_at_health == in_flight_at_ordinary == 0, (health_s, ordinary_s, results)
    for path, (out, took) in results.items():
        assert out["status"] == "FAILED" and "could not use this URL" in out["error"], out
        # Cut at the deadline: not before it, and long before the source would have ended
        # (the drips take hours, the resolver 30 s).
        assert URL_DEADLINE - 0.5 < took < 25, (path, took)
    assert worker.output().count(f"deadline of {URL_DEADLINE:g} s passed") >= 2
    assert "resolving 'slow-dns.test' took longer than the deadline" in worker.output()


def test_upload_failure_names_neither_bucket_nor_endpoint(worker, moto):
    out = worker.runsync(job(tone_b64(0.5), output="s3"))
    assert out["status"] == "FAILED", out
    assert out["error"] == ("could not deliver the audio (s3: NoSuchBucket); the worker's "
                            "log has the details")
    endpoint = moto.env()["CACHE_SYNC_ENDPOINT_URL"]
    assert MISSING_BUCKET not in json.dumps(out) and endpoint not in json.dumps(out)
    assert "NoSuchBucket" in worker.output() and MISSING_BUCKET in worker.output()


def test_internal_faults_reach_the_caller_without_internals(tmp_path, sites):
    """The engine raises with a path in the message, the health job's describe() raises:
    each reply is one generic line, the log has the details. URL fetching is off by default
    (this worker does not set HANDLER_ALLOW_URL_REF_AUDIO)."""
    root = tmp_path / "cache"
    secret_path = f"{root}/models/secret-weights.bin"
    write_light_model(root, fail_synthesis=f"cannot mmap {secret_path}",
                      fail_describe=f"describe broke at {secret_path}")
    env = worker_env(root, tmp_path, {"HANDLER_ENGINE": "light",
                                      "HANDLER_URL_ALLOWLIST": "127.0.0.2"})
    with api_worker(env, tmp_path / "worker.log") as w:
        before = len(sites["public"].hits)
        off = w.runsync(job(sites["public"].url("/ref.wav")))
        assert off["status"] == "FAILED" and "URLs are disabled" in off["error"]
        assert "HANDLER_ALLOW_URL_REF_AUDIO=true" in off["error"]
        assert len(sites["public"].hits) == before
        synth = w.runsync(job(tone_b64(0.5)))
        health = w.runsync({"health": True})
        replies = json.dumps([synth, health])
        assert synth["status"] == "FAILED"
        assert synth["error"] == ("synthesis failed (RuntimeError); the worker's log has the "
                                  "details")
        assert health["status"] == "FAILED"
        assert health["error"].startswith("internal error in job ")
        for secret in (str(root), "secret-weights", "Traceback", "error_traceback"):
            assert secret not in replies, secret
        log = w.output()
        assert log.count(secret_path) >= 2 and "Traceback" in log
