"""`ftctl validate | estimate | prepare | budget`: before any money is spent."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ftctl.controller.cli.app import (EXIT_FAILED, EXIT_OK, PHONE_REGION_HELP, app, die, emit_json, get_config, out,
                                      progress_bar, read_store, state)
from ftctl.controller.cli.views import plural
from ftctl.controller.config import Config, ConfigError

METHOD_HELP = "the training method whose data format to check (e.g. sft, dpo; default: the provider's first)"

if TYPE_CHECKING:
    from ftctl.controller.preflight.report import Report

def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # the check itself says what is wrong with it


class SplitBy(str, Enum):
    weight = "weight"


def maybe_config() -> Config | None:
    """The config when one is given or found; these commands also work without."""
    from ftctl.controller.config import find_config

    try:
        find_config(state.config_path)
    except ConfigError:
        return None
    return get_config()


def _kind(config: Config | None, provider: Optional[str], model: Optional[str]) -> tuple[str, Optional[str]]:
    from ftctl.controller.preflight.check import PreflightError, provider_kind

    try:
        return provider_kind(config, provider, model)
    except PreflightError as exc:
        die(str(exc))


def _lines_text(lines: list[int], line_count: int) -> str:
    shown = ", ".join(str(n) for n in lines)
    more = f" and {line_count - len(lines)} more" if line_count > len(lines) else ""
    return f"line{'s' if line_count > 1 else ''} {shown}{more}"


def sensitive_lines(report: Report, allow_pii: bool) -> list[str]:
    """What validate says of personal data and secrets: kinds, counts and
    line numbers, never the values."""
    from ftctl.controller.preflight.pii import KINDS, describe

    lines = []
    if report.pii:
        parts = [f"{describe(k, report.pii[k].count)} ({_lines_text(report.pii[k].lines, report.pii[k].line_count)})"
                 for k in KINDS if k in report.pii]
        lines.append("personal data: " + "; ".join(parts) + (" (allowed by --allow-pii)" if allow_pii else ""))
    if report.secrets.count:
        f = report.secrets
        lines.append(f"secrets: {describe('secret', f.count)} ({_lines_text(f.lines, f.line_count)}): API keys, "
                     f"tokens or private keys are never allowed in training data, not even with --allow-pii; "
                     f"remove them, or `ftctl prepare --scrub-pii` a copy with [SECRET] in their place")
    return lines


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="a JSONL training file")],
    provider: Annotated[Optional[str], typer.Option("--provider", help="a provider from the config, or a kind")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="count tokens with this model's tokenizer")] = None,
    allow_pii: Annotated[bool, typer.Option("--allow-pii", help="personal data (emails, phones, cards, IBANs) "
                                            "is not a failure; a secret always is")] = False,
    phone_region: Annotated[Optional[str], typer.Option("--phone-region", help=PHONE_REGION_HELP)] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="processes counting tokens "
                                                "(default: all CPUs for files over 8 MB)")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=METHOD_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the full report")] = False,
) -> None:
    """Check a training file line by line (streamed); exit 0 only when clean."""
    from ftctl.controller.preflight import check as preflight
    from ftctl.controller.preflight.report import DESCRIPTIONS

    config = maybe_config()
    kind, _ = _kind(config, provider, model)
    try:
        with progress_bar(f"validating {file.name}", _size(file)) as progress:
            result = preflight.run(file, kind=kind, model=model, config=config, need_estimate=False, jobs=jobs,
                                   method=method, region=phone_region, progress=progress)
    except preflight.PreflightError as exc:
        die(str(exc))
    report = result.report
    clean = report.clean(allow_pii)
    if as_json:
        emit_json({**report.as_dict(), "clean": clean})
        raise typer.Exit(EXIT_OK if clean else EXIT_FAILED)
    out.print(f"{file}: {plural(report.lines, 'line')}, {plural(report.examples, 'example')} "
              f"pass{'es' if report.examples == 1 else ''}, {plural(report.problem_count, 'problem')}", markup=False)
    for code, finding in sorted(report.problems.items(), key=lambda kv: kv[1].lines[:1]):
        out.print(f"  {DESCRIPTIONS.get(code, code):<40} {finding.count:>7,}  {_lines_text(finding.lines, finding.line_count)}"
                  f"  (first: {finding.first_message})", markup=False)
    for line in sensitive_lines(report, allow_pii):
        out.print(line, markup=False, soft_wrap=True)
    stats = report.token_stats()
    if stats:
        out.print(f"tokens ({report.tokenizer}, {report.model}): {report.data_tokens:,} data tokens in "
                  f"{plural(sum(report.token_histogram.values()), 'example')}; per example min {stats['min']:,}, "
                  f"median {stats['median']:,}, max {stats['max']:,}", markup=False)
    elif not model:
        out.print("tokens: pass --model (and --provider) to count them with the provider's tokenizer")
    if clean:
        out.print("OK")
    elif report.problem_count or not report.examples:
        out.print("NOT OK: fix the lines above, or `ftctl prepare` a cleaned copy")
    elif report.secret_count:
        out.print("NOT OK: remove the secrets, or `ftctl prepare --scrub-pii` a copy")
    else:
        out.print("NOT OK: `ftctl prepare --scrub-pii` a copy, or pass --allow-pii to accept personal data")
    raise typer.Exit(EXIT_OK if clean else EXIT_FAILED)


@app.command()
def estimate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="a JSONL training file")],
    provider: Annotated[str, typer.Option("--provider", help="a provider from the config, or a kind")],
    model: Annotated[str, typer.Option("--model")],
    epochs: Annotated[Optional[float], typer.Option("--epochs")] = None,
    training_steps: Annotated[Optional[int], typer.Option("--training-steps")] = None,
    quote: Annotated[bool, typer.Option("--quote/--no-quote", help="ask a configured provider for its own quote "
                                        "(the default, where it gives one)")] = True,
    method: Annotated[Optional[str], typer.Option("--method", help=METHOD_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What training on FILE costs: tokens x epochs x price, and the provider's own quote."""
    from ftctl.controller.preflight import check as preflight

    if epochs is not None and training_steps is not None:
        die("give --epochs or --training-steps, not both")
    config = maybe_config()
    kind, configured = _kind(config, provider, model)
    try:
        with progress_bar(f"counting {file.name}", _size(file)) as progress:
            result = preflight.run(file, kind=kind, model=model, config=config, epochs=epochs,
                                   training_steps=training_steps, method=method, progress=progress,
                                   provider=configured)
    except preflight.PreflightError as exc:
        die(str(exc))
    est, report = result.estimate, result.report
    quote_note = None
    from ftctl.providers.registry import kind as kind_of

    if configured and quote and kind_of(kind).quotes:
        from ftctl.providers.base import ProviderError

        hp = {"training_steps": training_steps} if training_steps else ({"epochs": epochs} if epochs else {})
        if method and kind_of(kind).method_key:
            hp[kind_of(kind).method_key] = method
        try:
            est.quote = preflight.quote(config, configured, file, model, hp)
        except ProviderError as exc:
            quote_note = f"the provider's quote failed ({exc.kind}: {exc.message}); using ours"
    if as_json:
        emit_json({**est.as_dict(), "file_problems": report.problem_count, "quote_error": quote_note})
        return
    lines = [
        f"{file}: {plural(est.examples, 'example')}, {plural(est.data_tokens, 'data token')} ({report.tokenizer})",
        *[f"  {n}" for n in est.notes],
        f"  trained tokens: {est.trained_tokens:,}",
        f"  price: ${est.price.train_per_m:g} per million trained tokens, minimum ${est.price.min_fee:.2f} a job "
        f"({est.price.source})",
        f"  estimate: ${est.cost:,.2f}",
    ]
    if est.quote is not None:
        lines.append(f"  provider's quote: ${est.quote:,.2f}")
    if quote_note:
        lines.append(f"  {quote_note}")
    lines.append(f"total (the higher): ${est.total:,.2f}")
    if report.problem_count:
        lines.append(f"warning: the file has {plural(report.problem_count, 'problem')}; see `ftctl validate {file}`")
    for line in lines:
        out.print(line, markup=False)


@app.command()
def prepare(
    source: Annotated[Path, typer.Argument(metavar="IN", help="the raw JSONL file")],
    output: Annotated[Path, typer.Argument(metavar="OUT", help="where to write the provider-ready file (with --split-by: a "
                                           "folder)")],
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", min=1)] = None,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="USD", min=0.01)] = None,
    strip_extra: Annotated[bool, typer.Option("--strip-extra", help="drop fields the provider rejects")] = False,
    scrub_pii: Annotated[bool, typer.Option("--scrub-pii", help="replace emails, phone numbers, card numbers, IBANs "
                                            "and secrets with [EMAIL], [PHONE], [CARD], [IBAN], [SECRET]")] = False,
    phone_region: Annotated[Optional[str], typer.Option("--phone-region", help=PHONE_REGION_HELP)] = None,
    seed: Annotated[int, typer.Option("--seed", help="the sample's seed")] = 0,
    provider: Annotated[Optional[str], typer.Option("--provider")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="count tokens and cost for this model")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="processes counting tokens")] = None,
    keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates", help="keep exact duplicates (judged on "
                                                  "the messages and, where given, the target agent)")] = False,
    split_by: Annotated[Optional[SplitBy], typer.Option("--split-by", help="weight: one file per weight value "
                                                        "in the OUTPUT folder, and their training_files")] = None,
    stratify: Annotated[Optional[str], typer.Option("--stratify", metavar="FIELD", help="sample so that FIELD's "
                                                    "values have the --target shares")] = None,
    target: Annotated[Optional[str], typer.Option("--target", metavar="VALUE=SHARE,...", help="with --stratify, "
                                                  "e.g. easy=0.30,medium=0.45,hard=0.25 (shares add up to 1)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write a provider-ready file: cleaned, optionally scrubbed, optionally a stratified sample or split by weight."""
    from ftctl.controller.preflight.check import PreflightError, default_jobs
    from ftctl.controller.preflight.check import phone_region as region_of
    from ftctl.controller.preflight.pii import KINDS, describe
    from ftctl.controller.preflight.prepare import PrepareError
    from ftctl.controller.preflight.prepare import prepare as run_prepare
    from ftctl.controller.ledger.pricing import PriceUnknown, price_for
    from ftctl.providers.registry import kind as kind_of
    from ftctl.providers.tokenizers import TokenizerUnavailable

    from ftctl.controller.preflight.stratify import StratifyError, parse_target, shortfall_lines

    if not source.is_file():
        die(f"{source}: no such file")
    if (stratify is None) != (target is None):
        die("--stratify FIELD and --target VALUE=SHARE,... go together")
    try:
        shares = parse_target(target) if target is not None else None
    except StratifyError as exc:
        die(str(exc))
    config = maybe_config()
    kind, _ = _kind(config, provider, model)
    try:
        region = region_of(config, phone_region)
    except PreflightError as exc:
        die(str(exc))
    counter = price = None
    if model:
        try:
            counter = kind_of(kind).counter(model)
            price = price_for(kind, model, config.price_overrides if config else None)
        except (TokenizerUnavailable, PriceUnknown) as exc:
            die(str(exc))
    try:
        size = source.stat().st_size
        with progress_bar(f"preparing {source.name}", 2 * size) as progress:  # two passes: check, then write
            result = run_prepare(source, output, provider=kind, counter=counter, price=price, epochs=epochs,
                                 max_examples=max_examples, max_cost=max_cost, strip_extra=strip_extra,
                                 scrub_pii=scrub_pii, seed=seed, phone_region=region, progress=progress,
                                 jobs=jobs or (default_jobs() if size > 8 * 2**20 else 1),
                                 keep_duplicates=keep_duplicates, split_by=split_by.value if split_by else None,
                                 stratify=stratify, target=shares)
    except PrepareError as exc:
        die(str(exc))
    if as_json:
        emit_json(result.as_dict())
        return
    d = result.as_dict()
    written = f"{len(result.files)} files in {output}" if split_by else str(output)
    out.print(f"wrote {written}: kept {result.kept:,} of {plural(result.lines, 'line')} (seed {seed})", markup=False)
    for reason, n in sorted(result.removed.items()):
        out.print(f"  removed {n:,}: {reason}", markup=False)
    if result.stripped:
        out.print("  stripped fields: " + ", ".join(f"{k} ({n:,})" for k, n in result.stripped.items()), markup=False)
    if result.unstripped_extra:
        out.print(f"  warning: {plural(result.unstripped_extra, 'example')} keep{'s' if result.unstripped_extra == 1 else ''} fields the provider rejects "
                  f"(--strip-extra removes them)", markup=False)
    if scrub_pii:
        replaced = ", ".join(describe(k, result.replaced[k]) for k in KINDS if result.replaced[k]) or "none"
        out.print(f"  replaced: {replaced}", markup=False)
    elif result.unscrubbed:
        out.print(f"  warning: {plural(result.unscrubbed, 'example')} hold{'s' if result.unscrubbed == 1 else ''} personal data or secrets "
                  f"(--scrub-pii replaces them)", markup=False)
    if len(d["weight_share_in"]) > 1 or list(d["weight_share_in"]) != ["-"]:
        out.print("  weight share in -> out: " + ", ".join(
            f"{k}: {v:.1f}% -> {d['weight_share_out'].get(k, 0.0):.1f}%" for k, v in d["weight_share_in"].items()),
            markup=False)
    if len(d["source_agent_share_in"]) > 1 or list(d["source_agent_share_in"]) != ["-"]:
        out.print("  source agent share in -> out: " + ", ".join(
            f"{k}: {v:.1f}% -> {d['source_agent_share_out'].get(k, 0.0):.1f}%"
            for k, v in d["source_agent_share_in"].items()), markup=False)
    if d["stratify"]:
        reached = d["stratify"]["shares_reached"]
        out.print(f"  {stratify} share reached (target): " + ", ".join(
            f"{v}: {100 * reached[v]:.1f}% ({100 * s:g}%)" for v, s in result.target.items()), markup=False)
        for line in shortfall_lines(stratify, result.strata_out, result.short):
            out.print(f"  short: {line}", markup=False)
    if result.cost is not None:
        out.print(f"  {result.data_tokens:,} data tokens; estimate ${result.cost:,.2f}", markup=False)
    if split_by:
        out.print("\nfor the agent in controller.toml (paths relative to the file, adjust them if it lives "
                  "elsewhere):", markup=False)
        out.print(result.training_files_snippet(), markup=False)


@app.command()
def budget(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Committed, spent and remaining against [budget] in controller.toml."""
    from datetime import timedelta

    from ftctl.controller.engine.policy import Budget
    from ftctl.models import utcnow

    config = get_config()
    caps = config.budget
    store = read_store(config)
    now = utcnow()
    since = now - timedelta(seconds=caps.period)
    storage = store.storage_since(since, now) if store else 0.0
    kept_fee, saved_fee = store.storage_fees() if store else (0.0, 0.0)
    spent = store.spent_in(since, now) if store else 0.0
    committed = store.committed() if store else 0.0
    waiting = list(store.jobs(states=["prepared"])) if store else []
    if store:  # a job in line no tick read yet is shown with the budget as it is now
        from ftctl.controller.ledger.reasons import shown
        from ftctl.controller.records import live_facts

        live = live_facts(store, config, now)
        over = [j for j in waiting if (r := shown(j, live)) is not None and r.code.startswith("budget")]
    else:
        over = []
    if store:
        store.close()
    left = Budget(caps.per_job, caps.total, spent).left(committed)
    remaining = None if left is None else round(left, 2)
    data = {"per_job_cap": caps.per_job, "total_cap": caps.total, "period_days": round(caps.period / 86400, 2),
            "spent": round(spent, 2), "storage": round(storage, 2), "committed": round(committed, 2),
            "remaining": remaining,
            "storage_per_month_kept": round(kept_fee, 2), "storage_per_month_saved": round(saved_fee, 2),
            "waiting_estimates": round(sum(j.estimated_cost or 0 for j in waiting), 2),
            "jobs_over_budget": [j.id for j in over]}
    if as_json:
        emit_json(data)
        return
    out.print(f"period: the last {data['period_days']:g} days", markup=False)
    out.print(f"spent: ${spent:,.2f} (succeeded jobs, finished evaluations, ${storage:,.2f} keeping their models)"
              f"   committed: ${committed:,.2f} (queued and running jobs, evaluations under way)", markup=False)
    out.print(f"storage: ${kept_fee:,.2f} a month for the models kept; retention saves ${saved_fee:,.2f} a month"
              + ("" if config.retention is not None else " (no [retention]: nothing is ever deleted)"), markup=False)
    if caps.total is not None:
        out.print(f"total cap: ${caps.total:,.2f}   remaining: ${remaining:,.2f}", markup=False)
    else:
        out.print("total cap: none", markup=False)
    out.print(f"per-job cap: {'$%.2f' % caps.per_job if caps.per_job is not None else 'none'}", markup=False)
    out.print(f"waiting: {plural(len(waiting), 'job')}, ${data['waiting_estimates']:,.2f} estimated; "
              f"{len(over)} held over budget" + (f" (jobs {', '.join(str(j.id) for j in over)})" if over else ""),
              markup=False)
