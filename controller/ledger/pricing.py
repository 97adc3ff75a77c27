"""Prices and cost estimates: trained tokens = data tokens x epochs (or
training steps x tokens per step), never data tokens alone."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any


class PriceUnknown(Exception):
    pass


@dataclass(frozen=True)
class Price:
    provider: str
    model: str  # the table entry that matched
    train_per_m: float
    min_fee: float = 0.0
    context: int | None = None
    tokens_per_step: int | None = None
    source: str = ""
    # what keeping the fine-tuned model costs a month (Mistral: $2 a model)
    storage_per_month: float = 0.0
    # per million tokens asked and answered (the evaluation gate's chat calls);
    # where the table gives none, the training price stands in (an upper bound)
    chat_per_m: float | None = None
    # a self-hosted trainer's examples a step: steps are priced at its data's mean tokens an example
    examples_per_step: int | None = None

    @property
    def chat_rate(self) -> float:
        return self.chat_per_m if self.chat_per_m is not None else self.train_per_m

    # the cost formulas, each written once: the estimate, the cost of a job a
    # provider reports trained tokens but no cost for (OpenAI), and the gate's
    # chat calls all price tokens here

    def per_token_cost(self, trained_tokens: float) -> float:
        return trained_tokens / 1e6 * self.train_per_m

    def training_cost(self, trained_tokens: float) -> float:
        """What training `trained_tokens` costs: never below the minimum fee a job."""
        return max(self.min_fee, self.per_token_cost(trained_tokens))

    def chat_cost(self, tokens: float) -> float:
        """What asking and answering `tokens` in chat calls costs."""
        return tokens / 1e6 * self.chat_rate


@lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    text = (resources.files("ftctl.controller.ledger") / "prices.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _match(entries: dict[str, Any], model: str) -> str | None:
    if model in entries:
        return model
    for name in sorted(entries, key=len, reverse=True):
        if model.startswith(name):
            return name
    return None


def price_for(kind: str, model: str, overrides: dict[str, Any] | None = None, method: str | None = None, *,
              section: Any = None, hyperparameters: dict[str, Any] | None = None) -> Price:
    """The price of training `model` on a provider of `kind`, by the price
    table its descriptor names; a fine-tuned model is priced as its root.
    controller.toml's [prices."kind/model"] entries win over the shipped
    table, field by field. A training method other than the kind's default
    is billed at `<method>_train_per_m` where the entry gives one (DPO costs
    more than SFT). An entry's `source` (a URL) and `checked` (a date) say
    where its figures come from."""
    from ftctl.providers.registry import kind as kind_of

    descriptor = kind_of(kind)
    table_kind = descriptor.price_key
    model = descriptor.base_model(model)
    table = price_table()
    entries = {k: v for k, v in table.get(table_kind, {}).items() if isinstance(v, dict)}
    name = _match(entries, model)
    base: dict[str, Any] = dict(entries[name]) if name else {}
    source = f"price table {table.get('version', '?')}" if name else ""
    own = descriptor.price_entry(section, model, hyperparameters)
    if own is not None:  # self-hosted: the provider's own section prices it (GPU-hours)
        base, name, source = dict(own), model, ""
    if base.get("source"):
        source += (", " if source else "") + f"{base['source']}" + (f" (checked {base['checked']})" if base.get("checked") else "")
    for key in (f"{kind}/{model}", f"{table_kind}/{model}"):
        if overrides and key in overrides:
            base.update({k: v for k, v in overrides[key].items() if v is not None})
            source = "controller.toml" if not source else f"{source} + controller.toml"
            name = name or model
            break
    per_m = base.get("train_per_m")
    if method and method != descriptor.methods[0] and base.get(f"{method}_train_per_m") is not None:
        per_m = base[f"{method}_train_per_m"]
    if not base or per_m is None:
        raise PriceUnknown(f"no price for {table_kind}/{model}: add [prices.\"{table_kind}/{model}\"] "
                           f"train_per_m = ... to controller.toml")
    chat = base.get("chat_per_m")
    return Price(table_kind, name, float(per_m), float(base.get("min_fee") or 0.0),
                 base.get("context"), base.get("tokens_per_step"), source,
                 float(base.get("storage_per_month") or 0.0), float(chat) if chat is not None else None,
                 base.get("examples_per_step"))


@dataclass
class Estimate:
    price: Price
    data_tokens: int
    examples: int
    trained_tokens: int
    cost: float
    epochs: float | None = None
    training_steps: int | None = None
    notes: list[str] = field(default_factory=list)
    quote: float | None = None  # the provider's own figure, when it gives one

    @property
    def total(self) -> float:
        """What the budget counts: the higher of ours and the provider's."""
        return max(self.cost, self.quote or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.price.provider, "model": self.price.model, "source": self.price.source,
                "price_source": self.price.source, "train_per_m": self.price.train_per_m,
                "min_fee": self.price.min_fee, "storage_per_month": self.price.storage_per_month,
                "examples": self.examples, "tokens": self.data_tokens, "data_tokens": self.data_tokens,
                "epochs": self.epochs, "training_steps": self.training_steps, "trained_tokens": self.trained_tokens,
                "cost": round(self.total, 2), "estimate": round(self.cost, 2), "provider_quote": self.quote,
                "total": round(self.total, 2), "notes": self.notes}


def estimate(price: Price, data_tokens: int, examples: int, *, epochs: float | None = None,
             training_steps: int | None = None) -> Estimate:
    notes = []
    if epochs is not None and training_steps is not None:
        raise ValueError("give epochs or training steps, not both")
    if training_steps is not None and not price.tokens_per_step and price.examples_per_step:
        per_step = price.examples_per_step * data_tokens / max(1, examples)
        trained = math.ceil(int(training_steps) * per_step)
        notes.append(f"{training_steps} steps x {price.examples_per_step} examples x {per_step / price.examples_per_step:,.0f}"
                     f" tokens an example")
    elif training_steps is not None:
        if not price.tokens_per_step:
            raise ValueError(f"{price.provider} bills by epochs, not training steps")
        trained = int(training_steps) * int(price.tokens_per_step)
        notes.append(f"{training_steps} steps x {price.tokens_per_step:,} tokens per step")
        if data_tokens:
            notes.append(f"= {trained / data_tokens:.2f} epochs of {data_tokens:,} data tokens")
    else:
        if epochs is None:
            from ftctl.providers.registry import kind as kind_of

            epochs, why = kind_of(price.provider).default_epochs(examples)
            notes.append(why)
        trained = math.ceil(data_tokens * float(epochs))
        notes.append(f"{data_tokens:,} data tokens x {epochs:g} epochs")
    cost = price.training_cost(trained)
    if cost > price.per_token_cost(trained):
        notes.append(f"minimum fee ${price.min_fee:.2f} per job applies")
    if price.storage_per_month:
        notes.append(f"keeping the model costs ${price.storage_per_month:.2f} a month more (the provider's "
                     f"storage fee; `ftctl budget` counts it for each kept model)")
    return Estimate(price, data_tokens, examples, trained, round(cost, 4), epochs, training_steps, notes)
