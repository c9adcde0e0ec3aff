"""Progress on stderr when it is not a terminal (n/N, elapsed, ETA, throttled), nothing with --quiet, and stdout
kept for the result: one JSON object under --json (issue 20, item 6). The CLI runs in subprocesses with pipes,
as in CI or ``ssh device m3edge ... | tee``."""

import io
import json
import re

import pytest

from conftest import DATA, run_cli
from m3edge.progress import Progress, fmt_seconds

LINE = re.compile(r"^(?P<desc>[\w .-]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+)s \((?P<pct>\d+)%\), "
                  r"(?P<elapsed>[\d.:]+( s)?) elapsed(, ETA (?P<eta>[\d.:]+( s)?))?( - (?P<label>.*))?$")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def lines(text: str, desc: str) -> list[re.Match]:
    got = [LINE.match(x) for x in text.splitlines() if x.startswith(desc + ":")]
    return [m for m in got if m]


def test_lines_every_5_percent_throttled_with_eta():
    out, clock = io.StringIO(), Clock()
    p = Progress("work", 200, "item", stream=out, clock=clock)
    for i in range(200):
        clock.t += 0.5  # 100 s in all: a 5% step (10 items) every 5 s, beyond the 1 s throttle
        p.update(1, f"item {i}")
    p.close()
    got = lines(out.getvalue(), "work")
    assert [int(m["n"]) for m in got] == list(range(10, 201, 10))  # 20 lines, the last at 200/200
    first = got[0]
    assert first["total"] == "200" and first["pct"] == "5" and first["label"] == "item 9"
    assert first["elapsed"] == "5.0 s" and first["eta"] == "1:35"  # 95 s left at the measured rate
    assert got[-1]["eta"] is None and got[-1]["pct"] == "100"


def test_fast_steps_are_throttled_but_the_end_is_printed():
    out, clock = io.StringIO(), Clock()
    with Progress("fast", 1000, "step", stream=out, clock=clock) as p:
        for _ in range(1000):
            clock.t += 0.001  # 1 s in all: the throttle allows the first 5% line and then one a second
            p.update()
    ns = [int(m["n"]) for m in lines(out.getvalue(), "fast")]
    assert ns[0] == 50 and ns[-1] == 1000 and len(ns) <= 3


def test_forced_lines_quiet_unknown_total_and_a_short_estimate():
    out, clock = io.StringIO(), Clock()
    p = Progress("phase", 100, stream=out, clock=clock)
    p.update(1, "setup", force=True)  # 1%: no 5% step yet, printed because forced
    assert out.getvalue().splitlines() == ["phase: 1/100 steps (1%), 0.0 s elapsed, ETA 0.0 s - setup"]
    q = io.StringIO()
    with Progress("quiet", 3, stream=q, quiet=True) as p:
        p.update(3, "x", force=True)
        p.note("nothing")
    assert q.getvalue() == ""
    u = io.StringIO()
    with Progress("rows", None, "row", stream=u, clock=clock) as p:
        p.update(1, "first", force=True)
    assert u.getvalue() == "rows: 1 rows, 0.0 s elapsed - first\n"
    g = io.StringIO()
    with Progress("grow", 2, stream=g, clock=clock) as p:
        for _ in range(3):  # one more than estimated: 3/3, never 3/2
            p.update(force=True)
    assert g.getvalue().splitlines()[-1].startswith("grow: 3/3 steps (100%)")
    assert fmt_seconds(59.94) == "59.9 s" and fmt_seconds(61) == "1:01" and fmt_seconds(3725) == "1:02:05"


def _json_only(stdout: str) -> dict:
    obj = json.loads(stdout)  # the whole of stdout is one JSON object
    assert isinstance(obj, dict)
    return obj


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_target):
    """`m3edge export --json` through pipes: the bundle and the export's stdout and stderr."""
    out = tmp_path_factory.mktemp("progress") / "b"
    r = run_cli("export", "--target", tiny_target, "--preset", "tiny", "-o", out, "--parity-tokens", "64", "--json")
    assert r.returncode == 0, r.stderr
    return out, r


def test_export_progress_reaches_its_end_after_the_end_to_end_check(exported):
    bundle, r = exported
    assert _json_only(r.stdout)["passed"] is True
    got = lines(r.stderr, "export tiny-test")
    assert got, r.stderr
    total = int(got[-1]["total"])
    assert {m["total"] for m in got} == {str(total)}  # the count is right from the start, never grown
    assert got[-1]["n"] == got[-1]["total"] and got[-1]["label"] == "end-to-end: pass memory_read"
    e2e = [m for m in got if (m["label"] or "").startswith("end-to-end")]
    # Every end-to-end step has its line, and the first comes before the bar's end (4 of its steps remain).
    assert [m["label"] for m in e2e] == ["end-to-end: 64 tokens encoded, memories read", "end-to-end: pass no_memory",
                                         "end-to-end: pass memory", "end-to-end: pass memory_read"]
    assert int(e2e[0]["n"]) == total - 3 and int(e2e[0]["pct"]) < 100
    assert all(m["unit"] == "step" for m in got)
    assert "\r" not in r.stderr  # no bar redraws in a log


def test_eval_and_verify_progress_and_quiet(exported, tmp_path):
    bundle, _ = exported
    text = tmp_path / "text.txt"
    text.write_bytes((DATA / "eval.txt").read_bytes()[:10000])
    r = run_cli("eval", bundle, "--data", text, "--json")
    assert r.returncode == 0, r.stderr
    assert _json_only(r.stdout)["bytes"] == 10000
    got = lines(r.stderr, "eval")
    assert [(m["n"], m["total"], m["unit"]) for m in got][-1] == ("10000", "10000", "byte")
    assert len(got) >= 2 and int(got[0]["n"]) == 4096  # one line per 4096-byte batch here (each over 5%)
    r = run_cli("eval", bundle, "--data", text, "--json", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _json_only(r.stdout)["bytes"] == 10000

    r = run_cli("verify", bundle, "--tokens", "64", "--json")
    assert r.returncode == 0, r.stderr
    assert _json_only(r.stdout)["passed"] is True
    got = lines(r.stderr, "verify")
    assert [(m["n"], m["total"]) for m in got] == [("1", "4"), ("2", "4"), ("3", "4"), ("4", "4")]
    r = run_cli("verify", bundle, "--tokens", "64", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_export_quiet_prints_nothing_on_stderr(tmp_path, tiny_target):
    r = run_cli("export", "--target", tiny_target, "--preset", "tiny", "-o", tmp_path / "b", "--parity-tokens", "32",
                "--bank-rows", "0", "--json", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _json_only(r.stdout)["bundle"] == str(tmp_path / "b")


def test_train_progress_lines(tmp_path):
    r = run_cli("train", "--preset", "tiny", "--steps", "4", "--batch", "32", "--eval-bytes", "256", "-o",
                tmp_path / "ckpt", "--json")
    assert r.returncode == 0, r.stderr
    assert _json_only(r.stdout)["checkpoint"] == str(tmp_path / "ckpt")
    got = lines(r.stderr, "train")
    # Each step is a 25% step; the 1 s throttle may merge fast ones, never the first or the last.
    ns = [int(m["n"]) for m in got]
    assert ns[0] == 1 and ns[-1] == 4 and ns == sorted(set(ns)) and all(m["total"] == "4" for m in got)
    assert re.fullmatch(r"loss \d+\.\d{3} bits/byte", got[0]["label"])
    assert "train: evaluating on 256 eval bytes, with and without memory" in r.stderr


def test_bench_progress_counts_rows(exported):
    bundle, _ = exported
    r = run_cli("bench", bundle, "--no-torch", "--suite", "engines", "--cache-sizes", "1", "--prompts", "1",
                "--bytes", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert _json_only(r.stdout)["rows"][0]["engine"] == "m3edge-runtime"
    got = lines(r.stderr, "bench engines")
    # The runtime row, then the cache sweep at 1 expert per layer: 2 policies x 3 prefetch settings.
    assert [m["n"] for m in got] == [str(i) for i in range(1, 8)] and {m["total"] for m in got} == {"7"}
    assert got[0]["label"].startswith("m3edge-runtime: ") and got[1]["label"].startswith("cache 1/lru/prefetch off")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_tqdm_bar_not_lines():
    out = Terminal()
    with Progress("bar", 50, "step", stream=out) as p:
        for _ in range(50):
            p.update(1, "x")
        p.note("a phase")
    text = out.getvalue()
    assert "\r" in text and "50/50" in text and "bar: a phase" in text
    assert not lines(text.replace("\r", "\n"), "bar")  # no log-style lines on a terminal
    quiet = Terminal()
    with Progress("bar", 5, stream=quiet, quiet=True) as p:
        p.update(5)
    assert quiet.getvalue() == ""
