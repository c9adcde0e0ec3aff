import numpy as np
import pytest

from m3edge.data import bigram_bits_per_byte, load_split, read_bytes, unigram_bits_per_byte, windows
from m3edge.errors import BadInput

from conftest import DATA


def test_windows_are_causal_and_left_padded():
    data = np.frombuffer(b"abcdef", dtype=np.uint8)
    w = windows(data, np.array([0, 2, 5]), 3)
    assert w.dtype == np.int64
    assert w.tolist() == [[0, 0, 0], [0, ord("a"), ord("b")], [ord("c"), ord("d"), ord("e")]]


def test_splits_are_real_disjoint_text():
    train, cal, ev = (load_split(DATA, s) for s in ("train", "calibration", "eval"))
    assert len(train) > 1_000_000 and len(cal) > 100_000 and len(ev) > 100_000
    assert b"def " in ev.tobytes() and ev.tobytes()[:4096] not in train.tobytes()


def test_bigram_beats_unigram_on_text():
    train, ev = load_split(DATA, "train"), load_split(DATA, "eval")
    uni, bi = unigram_bits_per_byte(train, ev), bigram_bits_per_byte(train, ev)
    assert 3.0 < bi < uni < 8.0


def test_unigram_of_uniform_text_is_eight_bits():
    data = np.arange(256, dtype=np.uint8).repeat(50)
    assert unigram_bits_per_byte(data, data) == pytest.approx(8.0, abs=1e-9)


def test_bad_text_files(tmp_path):
    with pytest.raises(BadInput, match="cannot read"):
        read_bytes(tmp_path / "nope.txt")
    (tmp_path / "one.txt").write_bytes(b"x")
    with pytest.raises(BadInput, match="at least 2 bytes"):
        read_bytes(tmp_path / "one.txt")
    with pytest.raises(BadInput, match="unknown split"):
        load_split(DATA, "test")


def test_with_facts_states_each_code_twice_with_a_gap_and_is_reproducible():
    import re

    from m3edge.data import FRAME, PLAIN, RESTATED, STATED, with_facts

    text = load_split(DATA, "train")[:40_000]
    a, roles = with_facts(text, np.random.default_rng(3), every=2048)
    b, roles_b = with_facts(text, np.random.default_rng(3), every=2048)
    assert np.array_equal(a, b) and np.array_equal(roles, roles_b)
    s = bytes(a).decode("latin-1")
    facts = re.findall(r"^ *([a-z_]+) = (['\"])([A-Za-z0-9]{6,16})\2$", s, re.M)
    assert len(facts) >= 2 * (len(text) // 2048) * 0.8
    for name, _, code in facts:
        hits = [m.start() for m in re.finditer(re.escape(code), s)]
        assert len(hits) >= 2 and hits[1] - hits[0] >= 64  # stated, then restated later
    # nothing of the original text is lost: removing the inserted lines gives it back
    rest = re.sub(r"^ *[a-z_]+ = (['\"])[A-Za-z0-9]{6,16}\1\n", "", s, flags=re.M)
    assert rest.encode("latin-1") == bytes(text)
    # the roles mark exactly the codes: each one's first statement STATED, its restatement RESTATED; the rest of
    # an inserted line is FRAME, and the text's own bytes PLAIN
    assert len(roles) == len(a)
    assert bytes(a[roles == PLAIN]) == bytes(text)
    inserted = "".join(ch if r != PLAIN else "\0" for ch, r in zip(s, roles)).split("\0")
    assert all(re.fullmatch(r" *[a-z_]+ = (['\"])[A-Za-z0-9]{6,16}\1\n", line) for line in inserted if line)
    assert set(roles.tolist()) == {PLAIN, STATED, RESTATED, FRAME}
    marked = "".join(ch if r in (STATED, RESTATED) else "\n" for ch, r in zip(s, roles)).split()
    codes = [code for _, _, code in facts]
    assert sorted(marked) == sorted(codes)
    first = {}
    for m in re.finditer(r"^ *[a-z_]+ = (['\"])([A-Za-z0-9]{6,16})\1$", s, re.M):
        at = m.start(2)
        want = RESTATED if m.group(0) in first else STATED
        first.setdefault(m.group(0), at)
        assert set(roles[at:at + len(m.group(2))].tolist()) == {want}


def test_shipped_train_counts_are_the_train_splits(tmp_path):
    """The package's train_counts.npz stands in for train.txt on a device: it must be train.txt's counts, so
    the baselines a wheel install prints are the repository's (rewrite it with ``python -m m3edge.data``)."""
    from m3edge.data import TRAIN_COUNTS, ByteCounts, train_counts

    train, ev = load_split(DATA, "train"), load_split(DATA, "eval")
    shipped = ByteCounts.load(DATA / TRAIN_COUNTS)
    fresh = ByteCounts.of(train)
    assert np.array_equal(shipped.unigram, fresh.unigram) and np.array_equal(shipped.bigram, fresh.bigram)
    assert bigram_bits_per_byte(shipped, ev) == bigram_bits_per_byte(train, ev)
    assert unigram_bits_per_byte(shipped, ev) == unigram_bits_per_byte(train, ev)
    # A folder of the user's own splits: its train.txt, not the shipped counts.
    (tmp_path / "train.txt").write_bytes(b"aaaaaaaab")
    assert train_counts(tmp_path).unigram[ord("a")] == 8
    # A folder without train.txt (the wheel's copy): the shipped counts.
    own = tmp_path / "no-train"
    own.mkdir()
    assert np.array_equal(train_counts(own).bigram, fresh.bigram)


def test_with_facts_too_dense_for_the_text_is_bad_input():
    from m3edge.data import with_facts

    text = load_split(DATA, "train")[:40_000]
    with pytest.raises(BadInput, match="larger --fact-every"):
        with_facts(text, np.random.default_rng(0), every=4)
