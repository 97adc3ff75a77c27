"""Validate big training files: peak memory and examples per second.

Writes a synthetic JSONL file of each size asked for (default 50 MB and
500 MB), then runs `ftctl validate FILE --model open-mistral-7b` on it in a
subprocess and reads the child's peak RSS. The small file is the baseline:
the RSS ratio shows whether memory grows with the file (it should not,
beyond the 8-byte duplicate digests and the token histogram).

It also runs a plain loop on the first file (json.loads, then mistral-common's
own count, in one process, tokenizer loaded before the clock starts) and
prints validate's CPU (all its processes) against it: what validate's own
checks (structure, personal data, secrets, duplicates) and start-up cost.

    .venv/bin/python benchmarks/validate_large.py [MB ...]
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the model answers with a short and precise explanation of the invoice, the refund policy, "
         "the contract clause, and the support ticket history for this customer account").split()


def make_file(path: Path, megabytes: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    target = megabytes * 1024 * 1024
    written = n = 0
    with open(path, "w") as fh:
        while written < target:
            user = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            line = json.dumps({"messages": [{"role": "system", "content": "You are the support agent."},
                                            {"role": "user", "content": f"#{n} {user}"},
                                            {"role": "assistant", "content": answer}]}) + "\n"
            fh.write(line)
            written += len(line)
            n += 1
    return n


PLAIN = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
tok = MistralTokenizer.from_file(str(MistralTokenizer._data_path() / "mistral_instruct_tokenizer_240323.model.v3"),
                                 mode=ValidationMode.finetuning)
# as ftctl's own counter (providers.tokenizers): no debug string decoded back
tok.instruct_tokenizer.decode = lambda tokens, special_token_policy=None: ""
started = time.process_time()
with open(sys.argv[1], "rb") as fh:
    n = sum(1 for line in fh
            if tok.encode_chat_completion(ChatCompletionRequest(messages=json.loads(line)["messages"])).tokens)
print(json.dumps([n, time.process_time() - started]))
"""


def plain_cpu(path: Path) -> float:
    n, cpu = json.loads(subprocess.run([sys.executable, "-c", PLAIN, str(path)], capture_output=True, text=True,
                                       check=True).stdout)
    return cpu


def measure(path: Path) -> tuple[float, int, dict, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ftctl", "validate", str(path), "--model", "open-mistral-7b",
                           "--json"], capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = after.ru_maxrss
    if proc.returncode not in (0, 1):
        raise SystemExit(proc.stderr)
    cpu = after.ru_utime + after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return elapsed, max(peak_kb, before), json.loads(proc.stdout), cpu


def main(sizes: list[int]) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for mb in sizes:
            path = Path(d) / f"train-{mb}mb.jsonl"
            examples = make_file(path, mb)
            # each size in a fresh child so ru_maxrss (a high-water mark) is its own
            out = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True,
                                 check=True).stdout
            elapsed, peak_kb, checked, cpu = json.loads(out)
            assert checked == examples, (checked, examples)
            plain = plain_cpu(path) if not rows else None
            rows.append((mb, os.path.getsize(path), examples, elapsed, peak_kb, cpu, plain))
            path.unlink()
    base = rows[0]
    print(f"{'file MB':>8} {'examples':>10} {'seconds':>8} {'examples/s':>11} {'MB/s':>6} {'peak RSS MB':>12} "
          f"{'RSS x base':>10} {'CPU s':>6}")
    for mb, size, examples, elapsed, peak_kb, cpu, _ in rows:
        print(f"{size / 2**20:>8.0f} {examples:>10,} {elapsed:>8.1f} {examples / elapsed:>11,.0f} "
              f"{size / 2**20 / elapsed:>6.1f} {peak_kb / 1024:>12.1f} {peak_kb / base[4]:>10.2f} {cpu:>6.1f}")
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; validate's CPU "
          f"on the {base[1] / 2**20:.0f} MB file (all its processes) vs a plain mistral-common loop: "
          f"{base[5]:.1f} s vs {base[6]:.1f} s, {base[5] / base[6]:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        elapsed, peak_kb, report, cpu = measure(Path(sys.argv[2]))
        print(json.dumps([elapsed, peak_kb, report["examples"], cpu]))
    else:
        main([int(a) for a in sys.argv[1:]] or [50, 500])
