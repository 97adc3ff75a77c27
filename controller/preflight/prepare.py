"""`ftctl prepare`: a provider-ready file from a raw one.

Two streamed passes. The first checks every line and files the usable ones
by stratum (their `weight` and `source_agent`); the second writes the chosen
lines, stripped of fields the provider rejects and scrubbed of personal data
if asked. With a cap (examples or dollars), a stratified sample keeps each
stratum's share, reproducibly for a seed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftctl.controller.ledger.files import atomic_output
from ftctl.controller.ledger.pricing import Price, estimate
from ftctl.controller.preflight.dataset import PROGRESS_EVERY, conversation_digest, detector, iter_examples
from ftctl.controller.preflight.pii import DEFAULT_REGION
from ftctl.controller.preflight.report import DigestSet
from ftctl.controller.preflight.stratify import counts, field_values, value_key
from ftctl.providers.tokenizers import Counter as TokenCounter

# problems prepare can fix (by stripping); every other problem drops the line
FIXABLE = {"extra_field"}


class PrepareError(Exception):
    pass


def _key(value: Any) -> str:
    return "-" if value is None else json.dumps(value) if not isinstance(value, str) else value


@dataclass
class Stratum:
    lines: array = field(default_factory=lambda: array("I"))
    tokens: array = field(default_factory=lambda: array("I"))


@dataclass
class PrepareResult:
    source: str
    output: str
    lines: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)
    stripped: Counter = field(default_factory=Counter)
    replaced: Counter = field(default_factory=Counter)  # --scrub-pii: placeholders put in, by kind
    unscrubbed: int = 0  # without --scrub-pii: kept examples holding personal data or secrets
    unstripped_extra: int = 0
    weights_in: Counter = field(default_factory=Counter)
    weights_out: Counter = field(default_factory=Counter)
    agents_in: Counter = field(default_factory=Counter)
    agents_out: Counter = field(default_factory=Counter)
    data_tokens: int = 0
    cost: float | None = None
    seed: int = 0
    # --split-by weight: weight -> the file its examples went to
    files: dict[float, str] = field(default_factory=dict)
    # --stratify FIELD --target: the shares asked for, the examples of each value in and out,
    # and what each short value wanted
    stratify: str | None = None
    target: dict[str, float] = field(default_factory=dict)
    strata_in: Counter = field(default_factory=Counter)
    strata_out: Counter = field(default_factory=Counter)
    short: dict[str, int] = field(default_factory=dict)

    @property
    def pii_replaced(self) -> int:
        return sum(self.replaced.values())

    def as_dict(self) -> dict[str, Any]:
        def shares(c: Counter) -> dict[str, float]:
            total = sum(c.values()) or 1
            return {k: round(100 * v / total, 2) for k, v in sorted(c.items())}

        return {"source": self.source, "output": self.output, "lines": self.lines, "kept": self.kept,
                "removed": dict(self.removed), "stripped_fields": dict(self.stripped),
                "pii_replaced": self.pii_replaced, "replaced": dict(self.replaced),
                "unscrubbed_examples": self.unscrubbed, "seed": self.seed,
                "weight_share_in": shares(self.weights_in), "weight_share_out": shares(self.weights_out),
                "source_agent_share_in": shares(self.agents_in), "source_agent_share_out": shares(self.agents_out),
                "data_tokens": self.data_tokens, "estimated_cost": self.cost,
                "files": {f"{w:g}": path for w, path in sorted(self.files.items())} or None,
                "stratify": self.stratified()}

    def stratified(self) -> dict[str, Any] | None:
        """--stratify: the field, the target shares, the shares reached (fractions) and the counts."""
        if self.stratify is None:
            return None
        total = sum(self.strata_out.values()) or 1
        return {"field": self.stratify, "target": self.target, "examples_in": dict(self.strata_in),
                "examples_out": {v: self.strata_out[v] for v in self.target},
                "shares_reached": {v: round(self.strata_out[v] / total, 4) for v in self.target},
                "short": {v: {"wanted": w, "kept": self.strata_out[v], "short": w - self.strata_out[v]}
                          for v, w in sorted(self.short.items())}}

    def training_files_snippet(self) -> str:
        """--split-by weight: the agent's `training_files`, ready to paste."""
        lines = ["training_files = ["]
        lines += [f"  {{ file = {json.dumps(path)}, weight = {float(w)!r} }}," for w, path in sorted(self.files.items())]
        return "\n".join(lines + ["]"])


def allocate(sizes: dict[tuple, int], n: int) -> dict[tuple, int]:
    """Largest-remainder allocation of n across strata, by their sizes."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    quotas = {k: n * size / total for k, size in sizes.items()}
    take = {k: math.floor(q) for k, q in quotas.items()}
    rest = n - sum(take.values())
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - take[k]), k))[:rest]:
        take[k] += 1
    return take


def _choose(strata: dict[tuple, Stratum], take: dict[tuple, int], seed: int) -> dict[tuple, list[int]]:
    rng = random.Random(seed)
    return {k: sorted(rng.sample(range(len(strata[k].lines)), take[k])) for k in sorted(strata)}


def _scrub_messages(messages: list[dict[str, Any]], scrub: Any, replaced: Counter) -> None:
    """Every text validate checks: string contents and the text of content parts."""
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            m["content"], found = scrub(content)
            replaced.update(found)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"], found = scrub(part["text"])
                    replaced.update(found)


def prepare(source: Path, output: Path, *, provider: str, counter: TokenCounter | None = None,
            price: Price | None = None, epochs: float | None = None, training_steps: int | None = None,
            max_examples: int | None = None, max_cost: float | None = None, strip_extra: bool = False,
            scrub_pii: bool = False, seed: int = 0, jobs: int = 1,
            phone_region: str = DEFAULT_REGION, keep_duplicates: bool = False,
            split_by: str | None = None, progress: Callable[[int], Any] | None = None,
            stratify: str | None = None, target: dict[str, float] | None = None) -> PrepareResult:
    """`keep_duplicates`: keep exact duplicates (duplicates are judged on the
    messages and, where the data names one, the target agent). `split_by`
    "weight": `output` is a folder that gets one file per weight value, each
    example's `weight` becoming its file's. `progress(bytes)`: how far the two
    passes over `source` are, 0 to twice its size (checking, then writing).
    `stratify` and `target`: sample FIELD's values to those shares
    (preflight.stratify), each value's examples spread over its weights and
    source agents as ever."""
    if max_examples is not None and max_cost is not None:
        raise PrepareError("give --max-examples or --max-cost, not both")
    if max_cost is not None and (price is None or counter is None):
        raise PrepareError("--max-cost needs a model with a known price (--model, --provider)")
    if max_cost is not None and training_steps is not None:
        raise PrepareError("with training steps the cost does not depend on the data: use --max-examples")
    if Path(source).resolve() == Path(output).resolve():
        raise PrepareError("the output must be another file than the input")
    if split_by not in (None, "weight"):
        raise PrepareError(f"--split-by {split_by!r}: only weight is known")
    if split_by and Path(output).exists() and not Path(output).is_dir():
        raise PrepareError(f"{output}: with --split-by weight the output is a folder, and this is a file")
    if (stratify is None) != (target is None):
        raise PrepareError("--stratify FIELD and --target VALUE=SHARE,... go together")
    if stratify is not None and max_cost is not None:
        raise PrepareError("--stratify samples to a number of examples: give --max-examples, not --max-cost")
    result = PrepareResult(str(source), str(output), seed=seed, stratify=stratify, target=dict(target or {}))
    codes, values = field_values(source, stratify) if stratify is not None else (None, None)
    strata: dict[tuple, Stratum] = {}
    sensitive = array("I")  # usable lines that hold personal data or secrets, in order
    for ex in iter_examples(source, provider=provider, counter=counter, jobs=jobs, phone_region=phone_region,
                            dedupe=not keep_duplicates, progress=progress):
        result.lines += 1
        blocking = [code for code, _ in ex.problems if code not in FIXABLE]
        if split_by and weight_value(ex.weight) is None:
            blocking.insert(0, "invalid_weight")
        if blocking:
            result.removed[blocking[0]] += 1
            continue
        key = (_key(ex.weight), _key(ex.source_agent))
        if codes is not None:
            value = values[codes[ex.line]] if ex.line < len(codes) else "-"
            if value not in result.target:
                result.removed[f"{stratify} not in --target"] += 1
                continue
            result.strata_in[value] += 1
            key = (*key, value)
        if ex.found:
            sensitive.append(ex.line)
        stratum = strata.setdefault(key, Stratum())
        stratum.lines.append(ex.line)
        stratum.tokens.append(ex.tokens or 0)
        result.weights_in[key[0]] += 1
        result.agents_in[key[1]] += 1
    eligible = sum(len(s.lines) for s in strata.values())
    if eligible == 0:
        raise PrepareError(f"{source}: no usable example (removed: {dict(result.removed)})")

    sizes = {k: len(s.lines) for k, s in strata.items()}
    n = eligible if max_examples is None else min(max_examples, eligible)
    take = allocate(sizes, n)
    if stratify is not None:
        missing = [v for v in result.target if not result.strata_in[v]]
        if missing and max_examples is None:
            raise PrepareError(f"--stratify {stratify}: no usable example has {stratify} = {missing[0]}, so no "
                               f"sample has its share (give --max-examples to keep what there is)")
        per_value, result.short = counts(result.strata_in, result.target, max_examples)
        take = {}
        for value, count in per_value.items():
            take.update(allocate({k: size for k, size in sizes.items() if k[2] == value}, count))
    chosen = _choose(strata, take, seed)
    if max_cost is not None:
        if price.min_fee > max_cost:
            raise PrepareError(f"--max-cost ${max_cost:.2f} is below the minimum fee ${price.min_fee:.2f} per job")

        def cost_of(picked: dict[tuple, list[int]]) -> float:
            tokens = sum(strata[k].tokens[i] for k, idx in picked.items() for i in idx)
            return estimate(price, tokens, 0, epochs=epochs).cost

        avg = sum(sum(s.tokens) for s in strata.values()) / eligible
        per_example = estimate(price, math.ceil(avg * 1000), 0, epochs=epochs).cost / 1000 if avg else 0
        if per_example > 0:
            n = min(eligible, max(1, int(max_cost / per_example)))
        while True:
            take = allocate(sizes, n)
            chosen = _choose(strata, take, seed)
            if cost_of(chosen) <= max_cost or n <= 1:
                break
            n = max(1, n - max(1, n // 100))
        if cost_of(chosen) > max_cost:
            raise PrepareError(f"--max-cost ${max_cost:.2f}: even one example costs more")

    selected = bytearray(max(s.lines[-1] for s in strata.values() if s.lines) + 1)
    for k, idx in chosen.items():
        for i in idx:
            selected[strata[k].lines[i]] = 1
    from ftctl.providers.registry import kind as kind_of

    allowed = kind_of(provider).example_keys
    try:
        with open(source, "rb") as src, contextlib.ExitStack() as stack:
            size = os.fstat(src.fileno()).st_size
            if split_by:
                Path(output).mkdir(parents=True, exist_ok=True)
                sink = _Split(Path(output), stack, result)
            else:
                one = stack.enter_context(atomic_output(output))
                sink = lambda _weight: one  # noqa: E731
            _write_chosen(src, sink, selected, result, allowed, strip_extra, scrub_pii, counter, sensitive,
                          phone_region, not keep_duplicates, bool(split_by),
                          None if progress is None else (lambda done: progress(size + done)), stratify)
    except OSError as exc:
        raise PrepareError(f"{output}: cannot write ({os.strerror(exc.errno) if exc.errno else exc}); "
                           f"nothing was changed there") from None
    result.removed["not sampled"] = eligible - result.kept - result.removed["duplicate once scrubbed"]
    if not result.removed["duplicate once scrubbed"]:
        del result.removed["duplicate once scrubbed"]
    if not result.removed["not sampled"]:
        del result.removed["not sampled"]
    if price is not None and counter is not None:
        result.cost = estimate(price, result.data_tokens, result.kept, epochs=epochs,
                               training_steps=training_steps).cost
    return result


def weight_value(value: Any) -> float | None:
    """An example's weight as a number (none given: 1.0); None if it is not one."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


class _Split:
    """--split-by weight: one provider-ready file per weight, each written
    whole or not at all (all of them are dropped if one write fails)."""

    def __init__(self, folder: Path, stack: contextlib.ExitStack, result: PrepareResult):
        self.folder, self.stack, self.result = folder, stack, result
        self.handles: dict[float, Any] = {}

    def __call__(self, weight: float) -> Any:
        if weight not in self.handles:
            path = self.folder / f"weight-{weight:g}.jsonl"
            self.handles[weight] = self.stack.enter_context(atomic_output(path))
            self.result.files[weight] = str(path)
        return self.handles[weight]


def _write_chosen(src: Any, sink: Any, selected: bytearray, result: PrepareResult, allowed: Any,
                  strip_extra: bool, scrub_pii: bool, counter: TokenCounter | None, sensitive: array,
                  phone_region: str, dedupe: bool = True, split: bool = False,
                  progress: Callable[[int], Any] | None = None, stratify: str | None = None) -> None:
    """The second pass: the chosen lines, stripped and scrubbed as asked,
    each to `sink(weight)`."""
    scrub = detector(phone_region).scrub
    next_sensitive = 0
    written = DigestSet() if scrub_pii and dedupe else None  # scrubbing can make two examples the same
    for number, raw in enumerate(src, start=1):
        if progress is not None and number % PROGRESS_EVERY == 0:
            progress(src.tell())
        if number >= len(selected) or not selected[number]:
            continue
        record = json.loads(raw)
        key = (_key(record.get("weight")), _key(record.get("source_agent")))
        weight = weight_value(record.pop("weight", None)) if split else 1.0
        stratum_of = record.get(stratify) if stratify is not None else None  # before --strip-extra
        extra = [k for k in record if k not in allowed]
        if strip_extra:
            for k in extra:
                result.stripped[k] += 1
                del record[k]
        elif extra:
            result.unstripped_extra += 1
        while next_sensitive < len(sensitive) and sensitive[next_sensitive] < number:
            next_sensitive += 1
        if next_sensitive < len(sensitive) and sensitive[next_sensitive] == number:
            if scrub_pii:
                _scrub_messages(record["messages"], scrub, result.replaced)
            else:
                result.unscrubbed += 1
        if written is not None and not written.add(conversation_digest(record["messages"],
                                                                     record.get("target_agent"))):
            result.removed["duplicate once scrubbed"] += 1
            continue
        result.weights_out[key[0]] += 1
        result.agents_out[key[1]] += 1
        if stratify is not None:
            result.strata_out[value_key(stratum_of)] += 1
        if counter is not None:
            result.data_tokens += counter.count(record["messages"])
        sink(weight).write(json.dumps(record, ensure_ascii=False) + "\n")
        result.kept += 1
