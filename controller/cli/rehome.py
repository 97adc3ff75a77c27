"""`ftctl rehome`: move agents' promoted models to another provider, on parity."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ftctl.controller.cli.jobs import _parse_hp

from ftctl.controller.cli.app import api, app, emit_json, out


def _about(seconds: float | None) -> str:
    from ftctl.controller.cli.views import age_text

    return "time unknown" if seconds is None else f"about {age_text(seconds)}"


def _print(moves: list[dict], plan: bool) -> None:
    total, moving = 0.0, 0
    for m in moves:
        head = f"{m['agent']}: {m['from_model']} (job {m['from_job']} on {m['from_provider']})"
        ends = (f"stops answering on {m['ends']}" + (f" ({m['ends_source']})" if m["ends_source"] else "")
                if m["ends"] else "no known end date")
        if m["note"]:
            out.print(f"{head}: skipped, {m['note']}; {ends}", markup=False)
            continue
        moving += 1
        total += m["estimated_cost"] or 0.0
        cost = f"estimate ${m['estimated_cost']:,.2f}" if m["estimated_cost"] is not None else "estimate unknown"
        did = "would move" if plan else f"job {m['job_id']} (prepared)"
        out.print(f"{head} -> {m['to_provider']}, {m['to_model']}: {did}", markup=False)
        out.print(f"  {cost}, {_about(m['estimated_seconds'])} ({m['estimated_seconds_source']})", markup=False)
        out.print(f"  {m['mapping']}", markup=False)
        out.print(f"  promoted only on {m['gate']}", markup=False)
        out.print(f"  {m['from_model']} on {m['from_provider']}: {ends}", markup=False)
    verb = "would move" if plan else "moving"
    out.print(f"{moving} model{'s' if moving != 1 else ''} {verb}, estimate ${total:,.2f} in all"
              + ("; nothing was changed (--plan)" if plan else ""), markup=False)


@app.command()
def rehome(
    agents: Annotated[Optional[list[str]], typer.Argument(help="agents whose promoted model moves")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="the provider (from the config) to move to")] = None,
    all_agents: Annotated[bool, typer.Option("--all", help="every agent with a promoted model")] = False,
    plan: Annotated[bool, typer.Option("--plan", help="print what would move, its cost and time, and when the "
                                       "current models stop answering; change nothing")] = False,
    golden: Annotated[Optional[int], typer.Option("--golden", metavar="N", help="record the promoted model's "
                      "answers to N prompts of its training data and prove parity on them (for an agent "
                      "without an eval file)")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="the base model on the new provider (default: "
                     "the one the promoted model trained from, where the new provider trains it)")] = None,
    min_improvement: Annotated[Optional[float], typer.Option("--min-improvement", help="the candidate's score "
                               "minus the promoted model's, at least (-0.02: at most 2 points worse; default: "
                               "the agent's eval, or 0 on a golden set)")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="a golden set's metric: exact, contains or "
                      "json (default exact)")] = None,
    allow_pii: Annotated[bool, typer.Option("--allow-pii", help="the training data holds personal data, "
                         "allowed (a secret never is)")] = False,
    hp: Annotated[Optional[list[str]], typer.Option("--hp", help="a hyperparameter KEY=VALUE for the new "
                                                    "provider, over the mapped ones (lora=false)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train agents' promoted models again on another provider; the new model is promoted only on parity.

    Each new job trains the promoted job's data (checked to be the same bytes) with its hyperparameters mapped to the new provider; its gate compares it with the promoted model, asked on its own provider (\\[agents.X.eval] with compare_to = "promoted", or a golden set with --golden N). The export file switches when the new model is promoted; until then the old one stays.
    """
    with api() as ft:
        moves = ft.rehome(agents or [], all_agents=all_agents, to=to, model=model, golden=golden,
                          min_improvement=min_improvement, metric=metric, plan=plan, allow_pii=allow_pii,
                          hyperparameters=_parse_hp(hp or []))
    if as_json:
        emit_json(moves)
        return
    _print(moves, plan)
