"""prepare --stratify FIELD --target ...: the shares reached within one
example, a short stratum kept whole and reported in one line, --split-by
weight alongside, and bad input refused in one line with nothing written."""

import json
import random
from collections import Counter

import pytest

from tests.conftest import run_ftctl

TARGET = {"easy": 0.30, "medium": 0.45, "hard": 0.25}
TARGET_ARG = "easy=0.30,medium=0.45,hard=0.25"


def raw_file(path, mix, n, seed=1):
    rng = random.Random(seed)
    names, weights = zip(*mix.items())
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                              {"role": "assistant", "content": f"answer {i}"}],
                                 "difficulty": rng.choices(names, weights)[0],
                                 "weight": rng.choice([1.0, 2.0])}) + "\n")
    return path


def difficulties(*paths):
    return Counter(json.loads(line)["difficulty"] for p in paths for line in open(p))


def prepare(*args, cwd):
    r = run_ftctl("prepare", *args, cwd=cwd)
    return r, (json.loads(r.stdout) if "--json" in args and r.returncode == 0 else None)


@pytest.mark.parametrize("n", [1000, 777, 101, 7])
def test_the_shares_are_reached_within_one_example(tmp_path, n):
    raw = raw_file(tmp_path / "raw.jsonl", {"easy": 0.6, "medium": 0.3, "hard": 0.1}, 6000)
    r, d = prepare(str(raw), str(tmp_path / "out.jsonl"), "--stratify", "difficulty", "--target", TARGET_ARG,
                   "--max-examples", str(n), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = difficulties(tmp_path / "out.jsonl")
    assert sum(got.values()) == n == d["kept"]
    for value, share in TARGET.items():
        assert abs(got[value] - share * n) <= 1, (value, got)
        assert d["stratify"]["examples_out"][value] == got[value]
        assert abs(d["stratify"]["shares_reached"][value] - share) <= 1 / n + 1e-4
    assert d["stratify"]["short"] == {}
    again = prepare(str(raw), str(tmp_path / "again.jsonl"), "--stratify", "difficulty", "--target", TARGET_ARG,
                    "--max-examples", str(n), cwd=tmp_path)[0]
    assert again.returncode == 0 and (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()


def test_a_short_stratum_is_kept_whole_and_said_in_one_line(tmp_path):
    raw = raw_file(tmp_path / "raw.jsonl", {"easy": 0.6, "medium": 0.35, "hard": 0.05}, 4000)
    have = difficulties(raw)
    n = 2000
    r, d = prepare(str(raw), str(tmp_path / "out.jsonl"), "--stratify", "difficulty", "--target", TARGET_ARG,
                   "--max-examples", str(n), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = difficulties(tmp_path / "out.jsonl")
    assert got["hard"] == have["hard"] < 0.25 * n  # all of it
    assert d["stratify"]["short"] == {"hard": {"wanted": 500, "kept": have["hard"], "short": 500 - have["hard"]}}
    for value in ("easy", "medium"):  # the others keep their own counts: a short stratum inflates nothing
        assert abs(got[value] - TARGET[value] * n) <= 1
    text = run_ftctl("prepare", str(raw), str(tmp_path / "text.jsonl"), "--stratify", "difficulty", "--target",
                     TARGET_ARG, "--max-examples", str(n), cwd=tmp_path).stdout
    short = [line for line in text.splitlines() if line.strip().startswith("short:")]
    assert short == [f"  short: difficulty = hard: {have['hard']:,} examples, 500 wanted: "
                     f"{500 - have['hard']:,} short (all of them kept)"]


def test_without_max_examples_the_largest_sample_the_shares_allow(tmp_path):
    raw = raw_file(tmp_path / "raw.jsonl", {"easy": 0.5, "medium": 0.3, "hard": 0.2, "other": 0.1}, 3000)
    have = difficulties(raw)
    r, d = prepare(str(raw), str(tmp_path / "out.jsonl"), "--stratify", "difficulty", "--target", TARGET_ARG,
                   "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = difficulties(tmp_path / "out.jsonl")
    n = sum(got.values())
    assert "other" not in got and d["removed"]["difficulty not in --target"] == have["other"]
    assert n == min(int(have[v] / s + 1e-9) for v, s in TARGET.items())
    assert all(abs(got[v] - s * n) <= 1 for v, s in TARGET.items())


def test_it_composes_with_split_by_weight(tmp_path):
    raw = raw_file(tmp_path / "raw.jsonl", {"easy": 0.6, "medium": 0.3, "hard": 0.1}, 5000)
    r, d = prepare(str(raw), str(tmp_path / "split"), "--stratify", "difficulty", "--target", TARGET_ARG,
                   "--max-examples", "900", "--split-by", "weight", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "split").glob("weight-*.jsonl"))
    assert [f.name for f in files] == ["weight-1.jsonl", "weight-2.jsonl"]
    got = difficulties(*files)
    assert sum(got.values()) == 900 and all(abs(got[v] - s * 900) <= 1 for v, s in TARGET.items())
    # each difficulty keeps the weights' mix it had (within one example a weight)
    src = [json.loads(line) for line in open(raw)]
    for value in TARGET:
        weights_in = Counter(e["weight"] for e in src if e["difficulty"] == value)
        out = {float(f.stem.split("-")[1]): sum(1 for line in open(f) if json.loads(line)["difficulty"] == value)
               for f in files}
        total = sum(weights_in.values())
        assert all(abs(out[w] - got[value] * c / total) <= 1 for w, c in weights_in.items()), (value, out)


@pytest.mark.parametrize("args, message", [
    (["--stratify", "difficulty"], "--stratify FIELD and --target VALUE=SHARE,... go together"),
    (["--target", TARGET_ARG], "--stratify FIELD and --target VALUE=SHARE,... go together"),
    (["--stratify", "difficulty", "--target", "easy=0.3,hard=0.6"], "--target: the shares add up to 0.9, not 1"),
    (["--stratify", "difficulty", "--target", "easy=0.5,easy=0.5"], "--target: easy is given twice"),
    (["--stratify", "difficulty", "--target", "easy:1"], "--target: 'easy:1' is not VALUE=SHARE"),
    (["--stratify", "difficulty", "--target", "easy=lots"], "--target: easy=lots: the share is not a number"),
    (["--stratify", "difficulty", "--target", TARGET_ARG, "--max-cost", "5", "--model", "open-mistral-7b"],
     "give --max-examples, not --max-cost"),
    (["--stratify", "difficulty", "--target", "easy=0.5,expert=0.5"],
     "--stratify difficulty: no usable example has difficulty = expert"),
    (["--stratify", "level", "--target", TARGET_ARG], "no usable example (removed: {'level not in --target': 200})"),
])
def test_bad_stratify_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    raw = raw_file(tmp_path / "raw.jsonl", {"easy": 0.6, "medium": 0.3, "hard": 0.1}, 200)
    r = run_ftctl("prepare", str(raw), str(tmp_path / "out.jsonl"), *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out.jsonl").exists()
