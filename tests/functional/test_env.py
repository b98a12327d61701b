"""`cache-sync env`: exports that work under eval, one value, --explain without secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cache_sync.config import Settings
from cache_sync.envs import cache_env, render
from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "cache_sync", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_eval_in_bash_then_import_installed_package(tmp_path):
    idx = build_index(tmp_path / "idx", [make_wheel(
        tmp_path / "w", "gamma-pkg", "0.3", {"gamma_pkg/__init__.py": "VALUE = 42\n"})])
    with serve(idx) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        p = cli(env, "install", "--no-push", "--installer", "pip", "gamma-pkg")
        assert p.returncode == 0, p.stderr
    script = (
        f'eval "$({sys.executable} -m cache_sync env)" && '
        'python -c "import gamma_pkg, tempfile, os; '
        'print(gamma_pkg.VALUE, gamma_pkg.__file__, tempfile.gettempdir(), '
        'os.environ[\'HF_HOME\'])"'
    )
    # `python` must be this interpreter: put its directory first on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + ":" + env["PATH"]
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    value, module_file, tmpdir, hf_home = r.stdout.split()
    cache = tmp_path / "cache"
    assert value == "42"
    assert module_file.startswith(str(cache / "packages"))
    # the shell's own dir (env creates it, so tempfile uses it): <host>-<the shell's pid>
    assert tmpdir.startswith(str(cache / "tmp") + "/") and Path(tmpdir).is_dir()
    assert hf_home.startswith(str(cache / "models"))


def test_eval_twice_does_not_grow_path(tmp_path):
    env = hermetic_env(tmp_path)
    script = (f'eval "$({sys.executable} -m cache_sync env)"; a=$PATH; '
              f'eval "$({sys.executable} -m cache_sync env)"; [ "$a" = "$PATH" ] && echo same')
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert r.stdout.strip() == "same", r.stderr


def test_single_var_json_and_unknown(tmp_path):
    env = hermetic_env(tmp_path)
    named = {**env, "CACHE_SYNC_WORKER": "w1"}
    assert cli(named, "env", "TMPDIR").stdout.strip() == str(tmp_path / "cache" / "tmp" / "w1")
    data = json.loads(cli(env, "env", "--shell", "json").stdout)
    assert data["PIP_CACHE_DIR"] == str(tmp_path / "cache" / "pip")
    assert data["PYTHONPATH"].split(":")[0] == str(tmp_path / "cache" / "packages")
    p = cli(env, "env", "NOT_A_VAR")
    assert p.returncode == 2 and "NOT_A_VAR is not a variable" in p.stderr


def test_explain_lists_user_set_and_derived_without_secrets(tmp_path):
    env = hermetic_env(tmp_path)
    env.update({"AWS_SECRET_ACCESS_KEY": "s3cr3t-value-xyz", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE9",
                "CACHE_SYNC_TRANSFERS": "7", "CACHE_SYNC_API_TOKEN": "tok-zzz-123"})
    p = cli(env, "env", "--explain")
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    for secret in ("s3cr3t-value-xyz", "AKIAEXAMPLE9", "tok-zzz-123"):
        assert secret not in text
    assert "CACHE_SYNC_TRANSFERS=7" in text and "CACHE_SYNC_API_TOKEN=<set>" in text
    assert "transfers" in text and "CACHE_SYNC_TRANSFERS" in text  # setting and its source
    assert "HF_HUB_CACHE" in text and "TORCH_HOME" in text
    j = json.loads(cli(env, "--json", "env", "--explain").stdout)
    assert j["settings"]["transfers"] == {"value": "7", "source": "CACHE_SYNC_TRANSFERS"}


def test_render_shells_quote_safely(tmp_path):
    s = Settings.from_env({"CACHE_SYNC_ROOT": str(tmp_path / "it's here"),
                           "CACHE_SYNC_WORKER": "w1"})
    env = cache_env(s, {"PATH": "/usr/bin:/bin"})
    bash = render(env, "bash")
    r = subprocess.run(["bash", "-c", bash + '\nprintf %s "$TMPDIR"'], capture_output=True,
                       text=True)
    assert r.stdout == str(tmp_path / "it's here" / "tmp" / "w1")
    fish = render(env, "fish")
    assert "set -gx PATH " in fish and "'/usr/bin' " not in fish  # plain words stay bare
    assert fish.count("set -gx") == len(env)


NASTY = ["x\\';touch PWNED;'y", "a'b", "back\\slash", "end\\", "\\\\'", "semi;colon $(x) `y`"]


def _fish_words(line: str) -> list[str]:
    """fish's tokenizer for the subset render() emits (words of plain characters and
    single-quoted strings, where only \\' and \\\\ are escapes -- fish's documented rule)."""
    words, cur, i, quoted = [], "", 0, False
    while i < len(line):
        c = line[i]
        if quoted:
            if c == "\\" and i + 1 < len(line) and line[i + 1] in "'\\":
                cur += line[i + 1]
                i += 2
                continue
            if c == "'":
                quoted = False
            else:
                cur += c
        elif c == "'":
            quoted = True
        elif c == " ":
            words.append(cur)
            cur = ""
        elif c in ";&|$()`\\":
            raise AssertionError(f"unquoted {c!r} in {line!r}")
        else:
            cur += c
        i += 1
    assert not quoted, f"unterminated quote in {line!r}"
    return [*words, cur]


def test_fish_quoting_as_fish_reads_it():
    for value in NASTY:
        env = {"TMPDIR": value, "PATH": f"{value}:/usr/bin"}
        lines = render(env, "fish").splitlines()
        assert _fish_words(lines[0]) == ["set", "-gx", "TMPDIR", value]
        assert _fish_words(lines[1]) == ["set", "-gx", "PATH", value, "/usr/bin"]


def test_fish_eval_of_a_root_with_quote_and_semicolon(tmp_path):
    import shutil

    import pytest
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish not installed (test_fish_quoting_as_fish_reads_it covers the rule)")
    root = tmp_path / "r\\';touch PWNED;'x"
    env = hermetic_env(tmp_path)
    env["CACHE_SYNC_ROOT"] = str(root)
    env["CACHE_SYNC_WORKER"] = "w1"
    out = cli(env, "env", "--shell", "fish")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "env.fish"
    script.write_text(out.stdout + "\necho $TMPDIR\n")
    r = subprocess.run([fish, "--no-config", str(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "PWNED").exists()
    assert r.stdout.strip() == str(root / "tmp" / "w1")
