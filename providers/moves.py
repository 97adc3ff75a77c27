"""Moving a job's spec from one provider kind to another (`ftctl rehome`):
its hyperparameters mapped to what the new kind's descriptor knows, and what
is known of when a model stops answering.

Pure descriptor knowledge: nothing here calls a provider.
"""

from __future__ import annotations

from datetime import date
from typing import Any

# our names that mean the same thing to different kinds: a value under one
# goes under the other where the new kind knows only that one
SYNONYMS = {"n_epochs": "epochs", "epochs": "n_epochs", "warmup_ratio": "warmup_fraction",
            "warmup_fraction": "warmup_ratio"}


def map_hyperparameters(source: Any, target: Any, hyperparameters: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the hyperparameters `target` takes, one line saying what was kept,
    renamed and dropped). `source`, `target`: ProviderKind descriptors."""
    kept, renamed, dropped = [], [], []
    out: dict[str, Any] = {}
    for name, value in hyperparameters.items():
        to = name if name in target.hyperparameters else SYNONYMS.get(name)
        if to is None or to not in target.hyperparameters:
            dropped.append(f"{name} (not known to {target.kind})")
            continue
        if to in out:  # epochs and n_epochs both given: the first stays
            dropped.append(f"{name} (the same as {to})")
            continue
        bad = target.bad_hyperparameter({to: value})
        if bad is not None:
            dropped.append(f"{name} ({bad[1]} on {target.kind})")
            continue
        out[to] = value
        (renamed.append(f"{name} -> {to}") if to != name else kept.append(name))
    parts = [f"kept {', '.join(kept)}" if kept else "kept none"]
    if renamed:
        parts.append(f"renamed {', '.join(renamed)}")
    if dropped:
        parts.append(f"dropped {', '.join(dropped)}")
    return out, f"hyperparameters {source.kind} -> {target.kind}: " + "; ".join(parts)


def stops_answering(descriptor: Any, model: str) -> tuple[date | None, str | None]:
    """(the date a model stops answering, its source) from the descriptor's
    `ends`, if it has one: {base model (or "*" for every model): a date, an
    ISO date string, or a mapping / an object with `date` (and `source`)}.
    A fine-tuned model answers until its base model is shut down, so `model`
    is looked up by its root (`ft:ROOT:...`). (None, None): no known end date."""
    ends = getattr(descriptor, "ends", None)
    if not ends:
        return None, None
    root = descriptor.base_model(model) if hasattr(descriptor, "base_model") else model
    entry = None
    if isinstance(ends, dict):
        entry = ends.get(model, ends.get(root, ends.get("*")))
    else:
        lookup = getattr(ends, "model_end", None) or getattr(ends, "get", None)
        entry = lookup(root) if callable(lookup) else None
    return _as_date(entry)


def _as_date(entry: Any) -> tuple[date | None, str | None]:
    if entry is None:
        return None, None
    source = None
    if isinstance(entry, dict):
        source, entry = entry.get("source"), entry.get("date", entry.get("shutdown"))
    elif not isinstance(entry, (str, date)):
        source, entry = getattr(entry, "source", None), getattr(entry, "date", None)
    if isinstance(entry, str):
        try:
            entry = date.fromisoformat(entry)
        except ValueError:
            return None, source
    return (entry if isinstance(entry, date) else None), source
