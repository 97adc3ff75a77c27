"""The shapes ftctl's data takes outside the database: a job, an event, an
attempt as plain dicts (what `--json` prints and the Python API returns),
and the live facts a waiting job's reason is rendered with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.ledger.reasons import Live, Reason, render, shown
from ftctl.models.schema import utcnow


def iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") + "Z" if at else None


def live_facts(source: Any, config: Any, now: datetime | None = None) -> Live:
    """The facts a waiting job's reason is shown with, as they are now:
    slots busy and why each line does not move (as the last tick saw them),
    money left in the budget and its answer for an estimate, the providers
    configured. `source`: a Store or a models.reads.Reads. Each is read only
    when a reason shown needs it."""
    if source is None:
        return Live()

    def slots() -> dict[str, tuple[int, int]]:
        if hasattr(source, "slots"):
            return source.slots()
        return {name: (s.slots_used, s.slots_limit) for name, s in source.provider_states().items()
                if s.slots_used is not None and s.slots_limit is not None}

    def left() -> float | None:
        from ftctl.controller.engine.policy import Budget

        caps = config.budget
        if caps.total is None:
            return None
        at = now or utcnow()
        return Budget(caps.per_job, caps.total, source.spent_in(at - timedelta(seconds=caps.period), at)).left(
            source.committed())

    def lines() -> dict[str, Reason]:
        if hasattr(source, "lines"):
            return {name: Reason(code, args) for name, (code, args) in source.lines().items()}
        return {name: Reason(s.line_code, s.line_args or {}) for name, s in source.provider_states().items()
                if s.line_code is not None}

    def refusal(cost: float | None) -> Reason | None:
        from ftctl.controller.engine.policy import Budget

        caps = config.budget
        if caps.per_job is None and caps.total is None:
            return None
        return Budget(caps.per_job, caps.total).refuse(cost, live.budget_left)

    live = Live(slots=slots, budget_left=left, lines=lines, refusal=refusal,
                providers=frozenset(config.providers) if config is not None else None)
    return live


def reason_text(job: Any, live: Live | None = None) -> str | None:
    """A job's reason in one line; a waiting job in line is shown with its
    provider's line and the budget as they are now (ledger.reasons.shown)."""
    reason = shown(job, live)
    return reason.text(live) if reason is not None else None


def job_dict(job: Any, now: datetime | None = None, live: Live | None = None) -> dict[str, Any]:
    """A stored job (the ORM's Job or a models.reads.JobRow) as plain data."""
    now = now or utcnow()
    reason = shown(job, live)
    return {
        "job_id": job.id,  # a job is `job_id` in every record (events, logs, models, submit results)
        "agent": job.agent,
        "provider": job.provider,
        "model": job.model,
        "state": job.state,
        "attempt": job.attempt,
        "age_seconds": int((now - job.created_at).total_seconds()),
        "reason": reason.text(live) if reason is not None else None,
        "reason_code": reason.code if reason is not None else None,
        "fine_tuned_model": job.fine_tuned_model,
        "provider_job_id": job.provider_job_id,
        "provider_status": job.provider_status,
        "training_file": job.training_file,
        "content_hash": job.content_hash,
        "hyperparameters": job.hyperparameters,
        "estimated_cost": job.estimated_cost,
        "actual_cost": job.actual_cost,
        "data_tokens": job.data_tokens,
        "trained_tokens": job.trained_tokens,
        "last_error": job.last_error,
        "not_before": iso(job.not_before),
        "cancel_pending": job.cancel_pending,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        # pipelines and the gate: the jobs it waits for, the one whose model it
        # trains on and the model id its create named; what its model is to its agent
        "upstream_job_ids": list(job.upstream_job_ids or []),
        "model_job_id": job.model_job_id,
        "base_model": job.base_model,
        "training_files": job.training_files,
        "promotion": job.promotion,
        "promoted_at": iso(job.promoted_at),
    }


def evaluation_dict(ev: Any, answered: int = 0) -> dict[str, Any]:
    """The gate's run: both scores, n, and the improvement against what was
    needed; its other criteria's thresholds, and once it is over each
    criterion's value and pass or fail (`criteria`)."""
    from ftctl.controller.engine.gate import total_questions

    repeats, safety = getattr(ev, "repeats", 1) or 1, getattr(ev, "safety_examples", 0) or 0
    candidates = 1 + len(getattr(ev, "checkpoints", None) or ())
    return {"metric": ev.metric, "file": ev.file, "n": ev.examples, "answered": answered,
            "questions": total_questions(ev.examples, repeats, safety, candidates), "repeats": repeats,
            "temperature": getattr(ev, "temperature", None),
            "max_score_stdev": getattr(ev, "max_score_stdev", None),
            "max_latency_p95": getattr(ev, "max_latency_p95", None),
            "safety_file": getattr(ev, "safety_file", None), "safety_prompts": safety,
            "criteria": getattr(ev, "criteria", None),
            # checkpoints = "best": [step, model] of each checkpoint asked besides the final model, and the one chosen
            "checkpoints": getattr(ev, "checkpoints", None), "chosen_model": getattr(ev, "chosen_model", None),
            "candidate_model": ev.candidate_model, "compare_model": ev.compare_model,
            "compare_provider": ev.compare_provider,  # where the comparison answered, when not the job's provider
            "candidate_score": ev.candidate_score, "compare_score": ev.compare_score,
            "improvement": ev.improvement, "min_improvement": ev.min_improvement,
            "estimated_cost": ev.estimated_cost, "started_at": iso(ev.started_at),
            "finished_at": iso(ev.finished_at), "error": ev.error, "last_error": ev.last_error}


def event_dict(ev: Any, agent: str | None = None, provider: str | None = None) -> dict[str, Any]:
    out = {
        "id": ev.event_id,
        "seq": ev.id,
        "job_id": ev.job_id,
        "event": ev.name or ev.to_state,
        "at": iso(ev.at),
        "from": ev.from_state,
        "to": ev.to_state,
        "trigger": ev.trigger,
        "reason": ev.reason,
        "provider_status": ev.provider_status,
    }
    if agent is not None:
        out.update(agent=agent, provider=provider)
    return out


def point_dict(p: Any) -> dict[str, Any]:
    return {"kind": p.kind, "step": p.step, "at": iso(p.at), "message": p.message, "metrics": p.metrics or {},
            "provider_job_id": p.provider_job_id, "key": p.key}


def series(points: list[dict[str, Any]], metric: str) -> list[list[float]]:
    """[step, value] of one metric from points (point_dict), a value a step
    (the last one read wins)."""
    by_step: dict[int, float] = {}
    for p in points:
        value = (p["metrics"] or {}).get(metric)
        if p["step"] is not None and isinstance(value, (int, float)):
            by_step[p["step"]] = float(value)
    return [[step, by_step[step]] for step in sorted(by_step)]


def training_summary(points: list[Any]) -> dict[str, Any] | None:
    """What `show` says about a job's training: its loss curves."""
    if not points:
        return None
    dicts = [point_dict(p) for p in points]
    return {"points": len(dicts), "train_loss": series(dicts, "train_loss"), "valid_loss": series(dicts, "valid_loss")}


def attempt_dict(a: Any) -> dict[str, Any]:
    return {"number": a.number, "client_token": a.client_token, "provider_job_id": a.provider_job_id,
            "outcome": a.outcome, "counted": a.counted, "submitted_at": iso(a.submitted_at),
            "ended_at": iso(a.ended_at)}


def model_dict(job: Any) -> dict[str, Any]:
    """A succeeded job's model: one shape for `models -o json` (the promoted
    ones) and `models --all -o json` (all of them)."""
    return {"agent": job.agent, "job_id": job.id, "provider": job.provider, "model": job.fine_tuned_model,
            "promotion": job.promotion, "promoted_at": iso(job.promoted_at), "succeeded_at": iso(job.updated_at)}


def latest_models(jobs: list[Any]) -> dict[str, str]:
    """Each agent's newest succeeded job's fine-tuned model id, whatever its promotion."""
    best: dict[str, Any] = {}
    for job in jobs:
        if job.state == "succeeded" and job.fine_tuned_model:
            if job.agent not in best or (job.updated_at, job.id) > (best[job.agent].updated_at, best[job.agent].id):
                best[job.agent] = job
    return {agent: best[agent].fine_tuned_model for agent in sorted(best)}


def undelivered_text(owed: dict[str, Any], now: datetime, daemon: bool = True) -> str:
    """`hooks: 3 event(s) undelivered (oldest 2m10s ago; last error: ...)`."""
    from ftctl.providers.settings import duration_text

    parts = []
    if owed["pending"]:
        age = (f"oldest {duration_text(max(1, int((now - owed['oldest']).total_seconds())))} ago"
               if owed["oldest"] else "")
        error = f"last error: {owed['last_error']}" if owed["last_error"] else ""
        detail = "; ".join(x for x in (age, error, "" if daemon else "the daemon delivers them") if x)
        parts.append(f"{owed['pending']} event(s) undelivered" + (f" ({detail})" if detail else ""))
    if owed["gave_up"]:
        parts.append(f"{owed['gave_up']} given up")
    return "hooks: " + ", ".join(parts)


def evaluation_diff(reads: Any, ev: Any) -> dict[str, Any]:
    """`show --diff`: the examples where the candidate did worse than the
    comparison (ledger.criteria.regressions), their prompts read from the
    eval file (or the re-home's golden set); `note` says why a prompt is
    missing (a file changed or gone since)."""
    from pathlib import Path

    from ftctl.controller.ledger.criteria import regressions
    from ftctl.controller.ledger.eval_files import EvalFileError, load_eval_file

    prompts: list[Any] = []
    note = None
    if ev.file.startswith("golden:"):
        prompts = reads.golden_prompts(int(ev.file.split(":", 1)[1]))
    else:
        try:
            digest, examples = load_eval_file(Path(ev.file))
        except EvalFileError as exc:
            note = f"prompts not shown: {exc}"
        else:
            if digest == ev.file_hash:
                prompts = [list(x.prompt) for x in examples]
            else:
                note = f"prompts not shown: eval file {ev.file} changed since the evaluation"
    role = next((f"ckpt-{step}" for step, model in getattr(ev, "checkpoints", None) or ()
                 if model == getattr(ev, "chosen_model", None)), "candidate")  # the model the verdict chose
    return {"regressions": regressions(reads.eval_answer_rows(ev.id), prompts, role), "note": note}
