"""Fault injection through the real CLI: hostile profiles and configs, bad CLI values, corrupt memory stores,
full and read-only disks, and kill -9 / SIGTERM at random points of an export and of ``run --memory-dir``.

What every case must give: exit 2 (never 1, never a traceback) with the error on one line naming the file and
field, and afterwards no half-written bundle in place, a re-run that succeeds, and every acknowledged memory
write still present. Processes are real subprocesses on real files (tmpfs mounts where the test runs as root);
the many cheap input cases go through click's CliRunner in one process, which runs the same command code.

Random points are drawn from a seed printed in every failure message (M3EDGE_FAULT_SEED to replay one).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3edge.cli import cli
from m3edge.runtime.store import DB_NAME

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("M3EDGE_FAULT_SEED", time.time_ns() % 100_000))
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def m3edge(*args, timeout=180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m3edge.cli", *map(os.fsencode, args)], capture_output=True,
                          timeout=timeout, env=ENV, cwd=ROOT, **kw)


def one_line_error(r, *needles) -> str:
    """Exit 2, no traceback, and the error (the last stderr line) names every needle."""
    err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else (r.stderr or r.output)
    assert r.returncode == 2, (r.returncode, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, last)
    return last


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def profile(work):
    from m3edge import targets

    d = targets.load("host-cpu").to_dict() | {"name": "tiny-faults", "aliases": [], "token_buckets": [1, 8],
                                               "capacity_buckets": [2, 8]}
    p = work / "tiny.json"
    p.write_text(json.dumps(d))
    return p


def export_args(profile, out):
    return ["export", "--target", str(profile), "--preset", "tiny", "-o", str(out), "--parity-tokens", "32"]


@pytest.fixture(scope="module")
def bundle(work, profile):
    out = work / "bundle"
    r = m3edge(*export_args(profile, out))
    assert r.returncode == 0, r.stderr.decode()
    return out


def memory_count(d) -> int:
    db = sqlite3.connect(Path(d) / DB_NAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT count(*) FROM memories").fetchone()[0]
    finally:
        db.close()


# ---- bad CLI values -----------------------------------------------------------------------------------------

CLI_CASES = [
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--seed", "-1"], "--seed"),
    (["--max-bytes", str(10**20)], "--max-bytes"),
    (["--max-bytes", "-5"], "--max-bytes"),
    (["--scene", "s" * 300], "--scene"),
    (["--cache-experts", "0"], "--cache-experts"),
]


@pytest.mark.parametrize("extra,name", CLI_CASES, ids=[" ".join(c[0])[:30] for c in CLI_CASES])
def test_bad_run_values_exit_2_naming_the_option(bundle, extra, name):
    r = CliRunner().invoke(cli, ["run", str(bundle), "--prompt", "hi", "--no-memory", *extra])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and name in r.output, r.output


def test_bench_threads_beyond_the_machine_exit_2(bundle):
    r = CliRunner().invoke(cli, ["bench", str(bundle), "--threads", "1000000", "--no-torch"])
    assert r.exit_code == 2 and "--threads 1000000" in r.output, r.output


def test_a_non_utf8_prompt_from_argv_exits_2_with_the_byte(bundle):
    r = m3edge("run", str(bundle), "--no-memory", "--prompt", b"ok \xff\xfe bytes")
    assert one_line_error(r, "--prompt", "0xff", "offset 3")


def test_writing_inside_a_bundle_is_refused_and_the_bundle_still_verifies(bundle, profile, work):
    runner = CliRunner()
    for args, option in ((["run", str(bundle), "--prompt", "x", "--memory-dir", str(bundle / "mem")], "--memory-dir"),
                         (["run", str(bundle), "--prompt", "x", "--engine-cache", str(bundle / "engines")],
                          "--engine-cache"),
                         (export_args(profile, bundle / "graphs" / "nested"), "-o"),
                         (["train", "--preset", "tiny", "--steps", "1", "-o", str(bundle / "ckpt")], "-o")):
        r = runner.invoke(cli, args)
        assert r.exit_code == 2 and "inside the m3edge bundle" in r.output and option in r.output, r.output
    assert runner.invoke(cli, ["inspect", str(bundle)]).exit_code == 0


def test_no_directory_of_a_bundle_is_exempt_from_the_listed_files_check(bundle, work):
    import shutil

    copy = work / "with-engine"
    shutil.copytree(bundle, copy)
    (copy / "trt_engines").mkdir()
    (copy / "trt_engines" / "m3edge_0123.engine").write_bytes(b"prebuilt engine, never verified")
    one_line_error(m3edge("inspect", str(copy)), "trt_engines/m3edge_0123.engine", "not listed in the manifest")


def test_a_manifest_naming_a_decryption_library_is_refused_before_any_session(bundle, work):
    import shutil

    copy = work / "hostile-target"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["target"]["providers"] = [{"name": "TensorrtExecutionProvider",
                                 "options": {"trt_engine_decryption_enable": True,
                                             "trt_engine_decryption_lib_path": "/tmp/evil.so"}},
                                {"name": "CPUExecutionProvider", "options": {}}]
    (copy / "manifest.json").write_text(json.dumps(m))
    one_line_error(m3edge("run", str(copy), "--prompt", "x", "--no-memory"), "manifest.json", "trt_engine_decryption")


# ---- hostile profiles and model configs ---------------------------------------------------------------------


def _profile(base: Path, **changes) -> dict:
    return json.loads(base.read_text()) | changes


PROFILE_CASES = [
    ("deeply nested", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("nested inside a field", lambda p: json.dumps(_profile(p, description=json.loads("[" * 40 + "]" * 40))),
     "nested too deeply"),
    ("not UTF-8", b"{\"name\": \"\xff\"}", "not UTF-8"),
    ("huge integer literal", lambda p: json.dumps(_profile(p)).replace('"threads": 2', '"threads": ' + "9" * 5000),
     "not valid JSON"),
    ("threads 1e6", lambda p: json.dumps(_profile(p, threads=1_000_000)), "'threads'"),
    ("threads above cores", lambda p: json.dumps(_profile(p, threads=64)), "'threads'"),
    ("capacity bucket 1e9", lambda p: json.dumps(_profile(p, capacity_buckets=[2, 10**9])), "'capacity_buckets'"),
    ("token bucket 1e9", lambda p: json.dumps(_profile(p, token_buckets=[1, 10**9])), "'token_buckets'"),
    ("ram 1e300", lambda p: json.dumps(_profile(p, ram_gb=1e300)), "'ram_gb'"),
    ("memory budget above RAM", lambda p: json.dumps(_profile(p, memory_budget_mb=10**6)), "'memory_budget_mb'"),
    ("memory capacity 1e12", lambda p: json.dumps(_profile(p, memory_capacity=10**12)), "'memory_capacity'"),
    ("expert cache 1e9", lambda p: json.dumps(_profile(p, expert_cache_size=10**9)), "'expert_cache_size'"),
    ("cpu provider option", lambda p: json.dumps(_profile(p, providers=[{"name": "CPUExecutionProvider",
                                                                          "options": {"x": 1}}])), "options.x"),
]


@pytest.mark.parametrize("label,text,needle", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_hostile_profiles_exit_2_naming_the_file_and_field(profile, work, label, text, needle):
    p = work / f"hostile-{label.replace(' ', '-')}.json"
    data = text(profile) if callable(text) else text
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    r = CliRunner().invoke(cli, ["export", "--target", str(p), "--preset", "tiny", "-o", str(work / "never")])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert not isinstance(r.exception, RecursionError) and "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    assert str(p) in last and needle in last, last
    assert not (work / "never").exists()


CONFIG_CASES = [
    ("expert_hidden_ratio 1e308", {"expert_hidden_ratio": 1e308}, "'expert_hidden_ratio'"),
    ("d_model 1e9", {"d_model": 10**9, "n_heads": 2}, "'d_model'"),
    ("context 1e8", {"context": 10**8}, "'context'"),
    ("capacity 1e9", {"expert_capacity": 10**9}, "'expert_capacity'"),
    ("sensory 1e9", {"sensory_dims": [10**9, 24, 16]}, "'sensory_dims'"),
    ("too many parameters", {"d_model": 8192, "n_layers": 64, "n_experts": 512, "n_heads": 8}, "parameters"),
    # Within every cap but not within this machine (or the profile's 8 GB): refused before torch allocates.
    ("bigger than RAM", {"d_model": 4096, "n_layers": 1, "n_experts": 128, "n_heads": 8}, "GiB"),
    ("nested", "[" * 50 + "]" * 50, "nested too deeply"),
]


@pytest.mark.parametrize("label,change,needle", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_absurd_model_configs_are_refused_before_anything_is_allocated(work, profile, label, change, needle):
    from m3edge.config import preset

    p = work / f"config-{label.replace(' ', '-')}.json"
    p.write_text(change if isinstance(change, str) else json.dumps(preset("tiny").to_dict() | change))
    for args in (["export", "--target", str(profile), "--config", str(p), "-o", str(work / "never")],
                 ["train", "--config", str(p), "-o", str(work / "never"), "--steps", "1"]):
        t0 = time.monotonic()
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args[0], r.exit_code, r.output, r.exception)
        last = r.output.strip().splitlines()[-1]
        assert str(p) in last and needle in last, last
        assert time.monotonic() - t0 < 20  # refused up front, not after an allocation or a hang


def test_the_size_estimate_is_the_model_parameter_count():
    import torch

    from m3edge.config import preset
    from m3edge.limits import estimate_params
    from m3edge.model.agent import MemoryMoEAgent

    for name in ("tiny", "small", "seed"):
        with torch.device("meta"):  # the seed's 726M parameters, without allocating them
            real = sum(p.numel() for p in MemoryMoEAgent(preset(name)).parameters())
        assert abs(estimate_params(preset(name)) - real) <= 0.05 * real, name


# ---- memory stores ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(bundle, work):
    d = work / "mem"
    for i in range(2):
        r = m3edge("run", str(bundle), "--prompt", f"the store holds memory number {i}", "--max-bytes", "24",
                   "--memory-dir", str(d))
        assert r.returncode == 0, r.stderr.decode()
    return d


def _copy(store, work, name):
    import shutil

    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(store, d)
    return d


def _sql(d, *statements):
    db = sqlite3.connect(Path(d) / DB_NAME)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


STORE_CASES = [
    ("bad meta JSON", ["UPDATE meta SET value = '{{{' WHERE key = 'seed'"], "meta 'seed'"),
    ("bad meta value", ["UPDATE meta SET value = '\"abc\"' WHERE key = 'capacity'"], "meta 'capacity'"),
    ("negative key_dim", ["UPDATE meta SET value = '-3' WHERE key = 'key_dim'"], "meta 'key_dim'"),
    ("missing meta", ["DELETE FROM meta WHERE key = 'ledger'"], "meta 'ledger'"),
    ("short key blob", ["UPDATE memories SET key = x'0000' WHERE id = (SELECT min(id) FROM memories)"], "key is 2 bytes"),
    ("short value blob", ["UPDATE memories SET value = x'00000000' WHERE id = (SELECT max(id) FROM memories)"],
     "value is 4 bytes"),
    ("NaN key", ["UPDATE memories SET key = x'" + "0000c07f" * 16 + "' WHERE id = (SELECT min(id) FROM memories)"],
     "NaN"),
    ("missing context", ["UPDATE memories SET context = NULL WHERE id = (SELECT max(id) FROM memories)"],
     "context is a NoneType"),
    ("text priority", ["UPDATE memories SET priority = 'high' WHERE id = (SELECT min(id) FROM memories)"], "priority"),
    ("dangling node source", ["INSERT OR REPLACE INTO node_sources VALUES (999999, 12345)"], "node_sources"),
    ("next_id behind", ["UPDATE meta SET value = '0' WHERE key = 'next_id'"], "next_id"),
]


@pytest.mark.parametrize("label,sql,needle", STORE_CASES, ids=[c[0] for c in STORE_CASES])
def test_an_edited_memory_store_exits_2_naming_the_file_and_field(bundle, store, work, label, sql, needle):
    d = _copy(store, work, "edited")
    _sql(d, *sql)
    r = m3edge("run", str(bundle), "--prompt", "x", "--max-bytes", "2", "--memory-dir", str(d))
    one_line_error(r, str(d / DB_NAME), needle)
    if label.startswith(("bad meta", "negative", "missing meta")):  # inspect reads meta and counts, not rows
        one_line_error(m3edge("memory", "inspect", str(d)), str(d / DB_NAME), needle)


def test_random_bytes_in_the_middle_of_the_store_never_trace_back(bundle, store, work):
    rng = random.Random(SEED)
    size = (store / DB_NAME).stat().st_size
    damaged = 0
    for trial in range(3):
        d = _copy(store, work, "garbled")
        with open(d / DB_NAME, "r+b") as f:
            f.seek(rng.randrange(4096, size - 4096))  # past the header page: the middle of the tables
            f.write(rng.randbytes(4096))
        for args in (("memory", "inspect", str(d)),
                     ("run", str(bundle), "--prompt", "x", "--max-bytes", "2", "--memory-dir", str(d))):
            r = m3edge(*args)
            err = r.stderr.decode(errors="replace")
            assert r.returncode in (0, 2) and "Traceback" not in err, (SEED, trial, args[0], err)
            if r.returncode == 2:
                damaged += 1
                assert str(d / DB_NAME) in err.strip().splitlines()[-1], (SEED, err)
    assert damaged, f"seed {SEED}: three 4 kB garbles of a {size} B store all went unnoticed"


def test_a_zero_length_store_is_a_new_empty_store(bundle, work):
    d = work / "empty"
    d.mkdir()
    (d / DB_NAME).write_bytes(b"")
    one_line_error(m3edge("memory", "inspect", str(d)), str(d / DB_NAME), "0-byte", "m3edge run --memory-dir")
    r = m3edge("run", str(bundle), "--prompt", "first words", "--max-bytes", "4", "--memory-dir", str(d))
    assert r.returncode == 0, r.stderr.decode()
    assert memory_count(d) > 0
    assert m3edge("memory", "inspect", str(d)).returncode == 0


def _mount(path: Path, size: str) -> bool:
    path.mkdir(exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


needs_mount = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                                 reason="tmpfs mounts need root (disk full and read-only media are real here)")


@needs_mount
def test_memory_inspect_reads_a_healthy_store_on_read_only_media(bundle, store, work):
    import shutil

    mnt = work / "ro"
    if not _mount(mnt, "4m"):
        pytest.skip("cannot mount tmpfs here")
    try:
        shutil.copytree(store, mnt / "mem")
        want = memory_count(store)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        r = m3edge("memory", "inspect", str(mnt / "mem"), "--json")
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout)["count"] == want
        # Writing there is refused up front, with what to do.
        r = m3edge("run", str(bundle), "--prompt", "x", "--max-bytes", "2", "--memory-dir", str(mnt / "mem"))
        one_line_error(r, str(mnt / "mem" / DB_NAME), "read-only")
    finally:
        _umount(mnt)


@needs_mount
def test_a_full_disk_under_run_memory_dir_exits_2_and_keeps_every_committed_memory(bundle, store, work):
    import shutil

    mnt = work / "full"
    if not _mount(mnt, "768k"):
        pytest.skip("cannot mount tmpfs here")
    try:
        shutil.copytree(store, mnt / "mem")
        before = memory_count(mnt / "mem")
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 256 * 1024))  # room for a few transactions, not all
        # One transaction a byte: some commit, then one meets the full disk.
        r = m3edge("run", str(bundle), "--prompt", "abc", "--max-bytes", "1000", "--memory-dir", str(mnt / "mem"))
        last = one_line_error(r, str(mnt / "mem" / DB_NAME), "rolled back")
        assert "disk is full" in last or "I/O error" in last, last
        after = memory_count(mnt / "mem")  # integrity ok; what was there and what committed before the error stay
        assert after > before
        (mnt / "filler").unlink()
        r = m3edge("run", str(bundle), "--prompt", "room again", "--max-bytes", "4", "--memory-dir", str(mnt / "mem"))
        assert r.returncode == 0, r.stderr.decode()
        assert memory_count(mnt / "mem") > after
    finally:
        _umount(mnt)


@needs_mount
def test_a_full_disk_under_export_exits_2_naming_the_output_and_leaves_nothing(profile, work):
    mnt = work / "full-export"
    if not _mount(mnt, "96k"):
        pytest.skip("cannot mount tmpfs here")
    try:
        r = m3edge(*export_args(profile, mnt / "b"))
        one_line_error(r, str(mnt / "b"), "No space left on device")
        assert list(mnt.iterdir()) == []  # no half bundle, no temporary folder
    finally:
        _umount(mnt)


# ---- kill -9 and SIGTERM at random points -------------------------------------------------------------------


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "m3edge.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=ROOT)


def test_kill_and_sigterm_at_random_points_of_an_export_leave_no_half_bundle(profile, work):
    rng = random.Random(SEED)
    parent = work / "killed-export"
    parent.mkdir()
    out = parent / "b"
    for sig in (signal.SIGKILL, signal.SIGTERM):
        p = _start(*export_args(profile, out), "--force")
        time.sleep(rng.uniform(1.0, 9.0))  # anywhere from imports to the parity check and the renames
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        err = err.decode(errors="replace")
        assert "Traceback" not in err, (SEED, sig, err)
        # Killed (-9), stopped cleanly by the handler (143), or by the default action during imports (-15).
        assert p.returncode in (0, -signal.SIGKILL, 143, -signal.SIGTERM), (SEED, sig, p.returncode, err)
        # Whatever is in place is a whole bundle (the previous one or the new one), never a half one.
        assert not out.exists() or m3edge("inspect", str(out)).returncode == 0, (SEED, sig)
        if p.returncode == 143:  # a clean stop removes its own temporary folder (a SIGKILLed run's may remain:
            # the next write removes it, unless this one was stopped before it got that far)
            assert [q.name for q in parent.iterdir() if f".tmp-{p.pid}-" in q.name] == [], SEED
    r = m3edge(*export_args(profile, out), "--force")
    assert r.returncode == 0, (SEED, r.stderr.decode())
    assert sorted(q.name for q in parent.iterdir()) == ["b"], SEED  # what the kills left was cleaned
    assert m3edge("inspect", str(out)).returncode == 0
    # Readable by a service user: the umask's modes (0755 / 0644 under the usual 022), not mkdtemp's 0700.
    from m3edge.atomic import _umask

    assert (out.stat().st_mode & 0o777) == 0o777 & ~_umask(), oct(out.stat().st_mode)
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_kill_and_sigterm_during_run_memory_dir_lose_no_acknowledged_write(bundle, work):
    rng = random.Random(SEED + 1)
    d = work / "killed-run"
    acked = 0
    text = (ROOT / "README.md").read_text()
    for i, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGKILL)):
        # A run that returned: everything it stored is acknowledged.
        r = m3edge("run", str(bundle), "--prompt", text[i * 80:(i + 1) * 80], "--max-bytes", "8",
                   "--memory-dir", str(d))
        assert r.returncode == 0, (SEED, r.stderr.decode())
        acked = memory_count(d)
        p = _start("run", str(bundle), "--prompt", text[i * 300:(i + 1) * 300], "--max-bytes", "2000",
                   "--memory-dir", str(d))
        time.sleep(rng.uniform(0.5, 4.0))
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        err = err.decode(errors="replace")
        assert "Traceback" not in err, (SEED, sig, err)
        assert p.returncode in (-signal.SIGKILL, 143, -signal.SIGTERM, 0), (SEED, sig, p.returncode, err)
        if p.returncode == 143:  # stopped through its cleanup: the store merged its log and closed
            assert not Path(f"{d / DB_NAME}-wal").exists(), SEED
        now = memory_count(d)  # integrity_check passes
        assert now >= acked, (SEED, sig, now, acked)
    r = m3edge("run", str(bundle), "--prompt", "after the kills", "--max-bytes", "4", "--memory-dir", str(d))
    assert r.returncode == 0, (SEED, r.stderr.decode())
    assert memory_count(d) > acked


def test_a_profile_asking_for_more_threads_than_this_machine_has_gets_its_cores(bundle, work):
    """A manifest's profile is data from elsewhere: 1,024 threads on a 2-core device would only contend."""
    import shutil

    from m3edge.runtime.agent import EdgeAgent

    copy = work / "many-threads"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["target"] |= {"cores": 1024, "threads": 1024}
    (copy / "manifest.json").write_text(json.dumps(m))
    with EdgeAgent.open(copy) as agent:
        assert agent.executor.session.threads <= (os.cpu_count() or 1)
        assert len(agent.generate(b"ab", 2, use_memory=False)) == 2


def test_the_next_export_cleans_what_a_kill_left_and_puts_a_previous_version_back(bundle, profile, work):
    """Deterministic versions of the kill points: a temporary folder of a dead process, and a kill between the two
    renames (the previous bundle moved aside to .b.old, the new one not yet in place)."""
    import shutil

    parent = work / "leftovers"
    parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (parent / f".b.tmp-{dead.pid}-abcd1234").mkdir()
    (parent / f".b.tmp-{dead.pid}-abcd1234" / "manifest.json").write_text("{half")
    live = parent / f".b.tmp-{os.getpid()}-live0000"  # a process still writing: left alone
    live.mkdir()
    shutil.copytree(bundle, parent / ".b.old")
    r = CliRunner().invoke(cli, ["inspect", str(parent / "b")])
    assert r.exit_code == 2  # nothing in place yet: only a write beside it recovers
    r = CliRunner().invoke(cli, export_args(profile, parent / "b"))
    assert r.exit_code == 2 and "already exists" in r.output, r.output  # the previous bundle is back: not replaced
    assert f"removed {parent / f'.b.tmp-{dead.pid}-abcd1234'}" in r.output and "restored" in r.output, r.output
    assert sorted(p.name for p in parent.iterdir()) == [live.name, "b"]
    assert CliRunner().invoke(cli, ["inspect", str(parent / "b")]).exit_code == 0


@needs_mount
def test_a_full_disk_is_a_typed_storage_error_for_the_server_to_map_to_507(work):
    """The server maps ``StorageError.http_status``; the library raises it, rolls back and keeps what committed."""
    import numpy as np

    from m3edge.errors import StorageError
    from m3edge.runtime.store import MemoryStore

    mnt = work / "full-lib"
    if not _mount(mnt, "256k"):
        pytest.skip("cannot mount tmpfs here")
    try:
        rng = np.random.default_rng(0)
        s = MemoryStore.open(mnt / "m", key_dim=64, value_dim=64, context_dim=64)
        stored = 0
        with pytest.raises(StorageError) as e:
            for _ in range(1000):
                k = rng.standard_normal((8, 64)).astype(np.float32)
                s.store(k, k, np.full(8, 0.5), context_keys=k)
                stored += 8
        assert e.value.http_status == 507 and str(mnt / "m" / DB_NAME) in str(e.value)
        assert stored and len(s.storage) == stored  # the working set is what committed, nothing more
        s.close()
        assert memory_count(mnt / "m") == stored
    finally:
        _umount(mnt)
