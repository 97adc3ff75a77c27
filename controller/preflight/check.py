"""Preflight: a job reaches `prepared` only with checked data and a known cost.

Used by `validate`, `estimate` and `submit`; the provider's own quote (Mistral:
a job created with auto_start=False carries its token count and cost) is
asked for only where a command wants it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftctl.controller.config import Config
from ftctl.controller.ledger.files import file_sha256
from ftctl.controller.ledger.pricing import Estimate, PriceUnknown, estimate, price_for
from ftctl.controller.preflight.dataset import validate
from ftctl.controller.preflight.report import Report
from ftctl.providers import registry
from ftctl.providers.tokenizers import TokenizerUnavailable


class PreflightError(Exception):
    """One line naming the file, the line and the problem."""


@dataclass
class Preflight:
    report: Report
    estimate: Estimate | None


def provider_kind(config: Config | None, provider: str | None, model: str | None) -> tuple[str, str | None]:
    """(kind, configured provider name) for a --provider value: a provider
    from the config, or a bare kind (mistral, openai) for offline use."""
    if provider and config is not None and provider in config.providers:
        return config.providers[provider].kind, provider
    if provider in registry.KINDS:
        return provider, None
    kinds = ", ".join(registry.KINDS)
    if provider:
        known = ", ".join(sorted(config.providers)) if config is not None else ""
        raise PreflightError(f"--provider: unknown provider {provider!r}"
                             + (f" (configured: {known}; or a kind: {kinds})" if known else f" (a kind: {kinds})"))
    return registry.guess(model or "").kind, None


def default_jobs() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def epochs_and_steps(hyperparameters: dict[str, Any]) -> tuple[float | None, int | None]:
    """The epochs and steps asked for (None: the provider chooses, e.g. "auto");
    their types were checked against the provider's (ProviderKind.bad_hyperparameter)."""
    epochs = hyperparameters.get("epochs", hyperparameters.get("n_epochs"))
    steps = hyperparameters.get("training_steps")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (float(epochs) if number(epochs) else None), (int(steps) if number(steps) else None)


def phone_region(config: Config | None, option: str | None) -> str:
    """--phone-region, else [preflight] phone_region, else US."""
    from ftctl.controller.preflight.pii import DEFAULT_REGION, RegionError, check_region

    if option is None:
        return config.preflight.phone_region if config is not None else DEFAULT_REGION
    try:
        return check_region(option)
    except RegionError as exc:
        raise PreflightError(f"--phone-region: {exc}") from None


def run(path: Path, *, kind: str, model: str | None, config: Config | None = None,
        epochs: float | None = None, training_steps: int | None = None, need_estimate: bool = True,
        jobs: int | None = None, method: str | None = None, region: str | None = None,
        progress: Any = None, provider: str | None = None,
        hyperparameters: dict[str, Any] | None = None) -> Preflight:
    """Validate (and count tokens of) a file, then estimate what training costs.
    `method`: the training method (its data format and price); default: the
    kind's first (SFT). `provider`: the configured provider, whose own section
    prices a self-hosted kind. `region`: --phone-region, if given. `progress(bytes
    read)` hears how far the check is."""
    path = Path(path)
    region = phone_region(config, region)
    if not path.is_file():
        raise PreflightError(f"{path}: no such file")
    try:
        method = registry.kind(kind).example_format(method).name
    except ValueError as exc:
        raise PreflightError(f"--method: {exc}") from None
    counter, price = None, None
    if model:
        overrides = config.price_overrides if config is not None else None
        try:
            counter = registry.kind(kind).counter(model)
            section = config.providers.get(provider) if config is not None and provider else None
            price = price_for(kind, model, overrides, method=method, section=section,
                              hyperparameters=hyperparameters)
        except (TokenizerUnavailable, PriceUnknown) as exc:
            if need_estimate:
                raise PreflightError(str(exc)) from None
    if jobs is None:  # worker processes pay off on big files only
        jobs = default_jobs() if path.stat().st_size > 8 * 2**20 else 1
    report = validate(path, provider=kind, counter=counter, context=price.context if price else None,
                      jobs=jobs, method=method, phone_region=region, progress=progress)
    est = None
    if price is not None and need_estimate:
        try:
            est = estimate(price, report.data_tokens, report.examples, epochs=epochs, training_steps=training_steps)
        except ValueError as exc:
            raise PreflightError(f"{path}: {exc}") from None
    return Preflight(report, est)


def quote(config: Config, provider_name: str, path: Path, model: str, hyperparameters: dict[str, Any]) -> float | None:
    """The provider's own price for this job, where it gives one (Mistral and
    the simulated provider: create with auto_start=False, read, cancel;
    Together: a price call that creates nothing).

    The file is uploaded once per content hash, as for a real job. The quote
    job is recorded in the database: it never counts as a slot, and the
    daemon cancels it again until the provider confirms.
    """
    from ftctl.models import Store
    from ftctl.providers import build_provider

    section = config.providers[provider_name]
    if not registry.kind(section.kind).quotes:
        return None
    digest = file_sha256(path)
    store = Store(config.database_url)
    provider = build_provider(provider_name, section, config.provider_env())
    try:
        file_id = store.uploaded_file(provider_name, digest)
        if file_id is None:
            file_id = provider.upload_file(path, digest)
            store.remember_upload(provider_name, digest, file_id)
        got = provider.quote(file_id, model, hyperparameters)
        if got.job_id is not None:  # a price call that made no job leaves nothing to cancel
            store.add_quote(provider_name, got.job_id)
            if got.settled:
                store.settle_quote(provider_name, got.job_id)
        return got.cost
    finally:
        provider.close()
        store.close()
