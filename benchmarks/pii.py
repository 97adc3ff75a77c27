"""Precision and recall of the personal data and secret detector, per kind.

On the labelled corpus in tests/preflight/pii_corpus.py (fake values only) against
issue 12's targets: recall >= 0.95 per kind, and no false positive on the
negatives (order numbers, IPs, versions, invoice ids, dates, ISBNs, UUIDs,
hashes ...). Then, beyond the corpus, two generated sets that show what the
unnamed random-token rule catches and what it costs, and the detector's
speed on plain prose and on text full of numbers.

    .venv/bin/python benchmarks/pii.py [--region US]

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.preflight.pii_corpus

from ftctl.controller.preflight.pii import KINDS, Detector  # noqa: E402
from tests.preflight.pii_corpus import NEGATIVES, POSITIVES, REGIONAL, score  # noqa: E402

TARGET_RECALL = 0.95
WORDS = ("get set user account by id handler http client connection manager factory proxy bean singleton "
         "abstract base encoded string bits process startup info certificate collection request response "
         "token parser builder service config default model train data file path json list map item value "
         "key name type error event stream buffer reader writer").split()
PROSE = ("the model answers with a short and precise explanation of the invoice, the refund policy, "
         "the contract clause, and the support ticket history for this customer account").split()


def corpus(detector: Detector) -> bool:
    counts = score(detector)
    print(f"corpus: {len(POSITIVES)} positives, {len(NEGATIVES)} negatives (tests/preflight/pii_corpus.py), "
          f"phone region {detector.region}")
    print(f"{'kind':<8} {'positives':>9} {'found':>6} {'missed':>6} {'false pos':>9} {'recall':>7} "
          f"{'precision':>9}  target (recall >= {TARGET_RECALL}, no false positive)")
    met = True
    for kind in KINDS:
        c = counts[kind]
        positives = c["tp"] + c["fn"]
        recall = c["tp"] / positives if positives else 0.0
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        ok = recall >= TARGET_RECALL and c["fp"] == 0
        met &= ok
        print(f"{kind:<8} {positives:>9} {c['tp']:>6} {c['fn']:>6} {c['fp']:>9} {recall:>7.3f} {precision:>9.3f}  "
              f"{'met' if ok else 'MISSED'}")
    flagged = sum(bool(detector.find(t)) for t in NEGATIVES)
    print(f"negatives flagged: {flagged} of {len(NEGATIVES)}")
    regional = sum(bool(Detector(region).find(text)) for region, text, _ in REGIONAL)
    print(f"national numbers in their own region (GB, AU, DE, FR): {regional} of {len(REGIONAL)} found")
    return met and flagged == 0


def generated(detector: Detector, rng: random.Random) -> None:
    print("\nbeyond the corpus (generated, seed 1):")
    alphabet = string.ascii_letters + string.digits
    for length in (24, 32, 40, 64):
        keys = ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(2000)]
        found = sum(bool(detector.find(f"use {k} with the client")) for k in keys)
        named = sum(bool(detector.find(f"MISTRAL_API_KEY={k}")) for k in keys)
        print(f"  random base62 keys of {length} characters: {100 * found / len(keys):5.1f}% found with no name "
              f"around them, {100 * named / len(keys):5.1f}% as MISTRAL_API_KEY=...")
    idents = []
    while len(idents) < 20000:
        parts = [w.capitalize() for w in rng.choices(WORDS, k=rng.randint(3, 7))]
        for _ in range(rng.randint(1, 3)):
            parts.insert(rng.randint(0, len(parts)), str(rng.choice([2, 3, 8, 16, 32, 64, 256, 404, 1024, 2024])))
        ident = "".join(parts)
        if len(ident) >= 20:
            idents.append(ident)
    flagged = sum(bool(detector.find(f"call {i} first")) for i in idents)
    print(f"  CamelCase identifiers with digits (e.g. {idents[0]}): {100 * flagged / len(idents):.2f}% "
          f"flagged as secrets")
    hashes = ["".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (32, 40, 64) for _ in range(300)]
    uuids = [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}" for h in hashes[:300]]
    flagged = sum(bool(detector.find(f"the digest is {h} here")) for h in hashes + uuids)
    print(f"  hex hashes (32, 40, 64 digits) and UUIDs: {flagged} of {len(hashes) + len(uuids)} flagged")


def speed(detector: Detector, rng: random.Random) -> None:
    prose = [" ".join(rng.choices(PROSE, k=rng.randint(20, 60))) for _ in range(3000)]
    numbers = [f"Order 123-456-{rng.randint(100, 999)} of 2024-05-{rng.randint(10, 28)} at 10:{rng.randint(10, 59)}, "
               f"invoice INV-2024-{rng.randint(10000, 99999)} for $1,{rng.randint(100, 999)}.50 on 10.0.0."
               f"{rng.randint(1, 254)} (v2.{rng.randint(0, 20)}.3), see https://docs.example.com/jobs/"
               f"{rng.randint(1000, 9999)} " + " ".join(rng.choices(PROSE, k=20)) for _ in range(3000)]
    print("\nspeed (one process):")
    for name, texts in (("plain prose", prose), ("text full of numbers, ids and a URL", numbers)):
        started = time.perf_counter()
        for t in texts:
            detector.find(t)
        elapsed = time.perf_counter() - started
        avg = sum(map(len, texts)) // len(texts)
        print(f"  {name} ({avg} characters): {1e6 * elapsed / len(texts):.1f} us a text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", default="US", help="default phone region (the corpus is written for US)")
    args = parser.parse_args()
    detector = Detector(args.region)
    met = corpus(detector)
    rng = random.Random(1)
    generated(detector, rng)
    speed(detector, rng)
    print(f"\ntargets {'met' if met else 'MISSED'}")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
