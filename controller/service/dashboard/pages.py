"""The pages, rendered on the server from what models.reads gives (through
the same Ftctl reads the CLI uses). Every value goes through `esc`: masked,
then escaped. A page returns (status, html)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ftctl.controller.cli.views import COLUMNS, cells, cost_text, show_fields
from ftctl.controller.ledger.states import STATES
from ftctl.controller.service.dashboard.html import esc, esc_all, link, page, table, tr
from ftctl.controller.service.dashboard.svg import bar, loss_chart, pipeline_graph
from ftctl.models.schema import utcnow

FINISHED_SHOWN = 50  # like `status`: every unfinished job and the last 50 finished


class Query:
    """The jobs page's filters (state, provider, agent), as `status` takes them."""

    def __init__(self, params: dict[str, list[str]]):
        def listed(key: str) -> list[str] | None:
            found = [v for value in params.get(key, []) for v in value.split(",") if v]
            return found or None

        self.states = listed("state")
        self.providers = listed("provider")
        self.agents = listed("agent")
        self.all = params.get("all", [""])[0] in ("1", "true", "yes")
        bad = [s for s in self.states or [] if s not in STATES]
        self.error = f"state: unknown value {bad[0]!r} (one of {', '.join(STATES)})" if bad else None

    def params(self, **change: Any) -> dict[str, Any]:
        out = {"state": self.states, "provider": self.providers, "agent": self.agents, "all": "1" if self.all else None}
        out.update(change)
        return {k: (",".join(v) if isinstance(v, list) else v) for k, v in out.items() if v}

    def matches(self, job: Any) -> bool:
        return all(values is None or value in values for values, value in (
            (self.states, job.state), (self.providers, job.provider), (self.agents, job.agent)))


def job_row(job: Any, now: Any, live: Any) -> str:
    """One row of the jobs table: the `status` columns, the id a link."""
    shown = esc_all(cells(job, now, live))
    state = shown[4]  # one of STATES: needs no escaping of its own
    return (f'<tr id="job-{job.id}" data-state="{state}"><td><a href="/jobs/{job.id}">{shown[0]}</a></td><td>'
            + "</td><td>".join(shown[1:4]) + f'</td><td><span class="state s-{state}">{state}</span></td><td>'
            + "</td><td>".join(shown[5:]) + "</td></tr>")


def _filters(q: Query, name: str, key: str, values: list[str], chosen: list[str] | None) -> str:
    links = [f'<a href="{link("/", q.params(**{key: None}))}"{"" if chosen else " class=on"}>any</a>']
    links += [f'<a href="{link("/", q.params(**{key: v}))}"{" class=on" if chosen == [v] else ""}>{esc(v)}</a>'
              for v in values]
    return f'<p class="filters"><b>{esc(name)}</b>: {" ".join(links)}</p>'


def jobs_page(ft: Any, q: Query, nonce: str) -> tuple[int, str]:
    if q.error:
        return 400, page("Jobs", f'<p class="err">{esc(q.error)}</p>', active="/", nonce=nonce)
    reads = ft.reads()
    found = ft.listing(states=q.states, agents=q.agents, providers=q.providers,
                       finished=None if q.all else FINISHED_SHOWN)
    after = reads.last_event_seq() if reads is not None else 0
    rows = [job_row(j, found.now, found.live) for j in found.rows]
    head = (_filters(q, "state", "state", list(STATES), q.states)
            + _filters(q, "provider", "provider", sorted(ft.config.providers), q.providers)
            + _filters(q, "agent", "agent", sorted(ft.config.agents), q.agents))
    note = ""
    if found.hidden:
        note = (f'<p class="muted">{found.hidden:,} older finished jobs not shown '
                f'(<a href="{link("/", q.params(all="1"))}">show every job</a>)</p>')
    if not rows:
        note += '<p class="muted">No jobs' + (" match." if q.states or q.agents or q.providers else ".") + "</p>"
    stream = link("/events", {**q.params(all=None), "after": after})
    body = head + table(COLUMNS, rows, attrs=f' id="jobs" data-stream="{stream}"') + note
    return 200, page("Jobs", body, active="/", nonce=nonce, script=True)


def _history(events: list[Any]) -> str:
    rows = [tr([esc(e.at.strftime("%Y-%m-%d %H:%M:%S") if e.at else "-"), esc(e.from_state or "-"),
                esc(e.to_state), esc(e.trigger), esc(e.provider_status or "-"), esc(e.reason or "-")])
            for e in events]
    return table(("AT", "FROM", "TO", "TRIGGER", "PROVIDER", "REASON"), rows)


def _gate(reads: Any, job_id: int) -> str:
    run = reads.evaluation(job_id)
    if run is None:
        return ""
    ev, answered = run
    rows = [tr([esc("metric"), esc(f"{ev.metric} on n={ev.examples} examples ({answered} answers)")]),
            tr([esc("candidate"), esc(f"{ev.candidate_model}: {ev.candidate_score}")]),
            tr([esc("compared with"), esc(f"{ev.compare_model}: {ev.compare_score}")]),
            tr([esc("improvement"), esc(f"{ev.improvement} (needed {ev.min_improvement:+.2f})")])]
    if ev.error or ev.last_error:
        rows.append(tr([esc("error"), f'<span class="err">{esc(ev.error or ev.last_error)}</span>']))
    regressed = [tr([esc(r.example), esc(r.candidate_answer), esc(f"{r.candidate_score:.2f}"), esc(r.compare_answer),
                     esc(f"{r.compare_score:.2f}")]) for r in reads.regressed(ev.id)]
    out = "<h2>Evaluation gate</h2>" + table(("", ""), rows)
    if regressed:
        out += "<h3>Regressed examples</h3>" + table(("EXAMPLE", "CANDIDATE", "SCORE", "COMPARED", "SCORE"), regressed)
    return out


def job_page(ft: Any, job_id: int, nonce: str) -> tuple[int, str]:
    from ftctl.controller.records import point_dict, series

    reads = ft.reads()
    row = reads.job(job_id) if reads is not None else None
    if row is None:
        return 404, page(f"Job {job_id}", f'<p class="err">No job {job_id}.</p>', active="/", nonce=nonce)
    data = ft.job(job_id)
    fields = [tr([esc(k), esc(v)]) for k, v in show_fields(data)]
    points = reads.log_points(job_id, row.provider_job_id) if row.provider_job_id else []
    dicts = [point_dict(p) for p in points]
    curves = {"train_loss": series(dicts, "train_loss"), "valid_loss": series(dicts, "valid_loss")}
    checkpoints = sorted({p.step for p in points if p.kind == "checkpoint" and p.step is not None})
    est, act = row.estimated_cost, row.actual_cost
    cost = (f"<p>Estimate {esc(f'${est:,.4f}' if est is not None else '-')}, actual "
            f"{esc(f'${act:,.4f}' if act is not None else '-')} {bar(act or 0.0, max(est or 0.0, act or 0.0, 1e-9))}"
            f"</p>")
    body = (f'<p><span class="state s-{esc(row.state)}">{esc(row.state)}</span> · {esc(cost_text(row))}</p>'
            + f"<h2>Loss by step</h2>{loss_chart(curves, checkpoints)}"
            + f'<p class="muted">{len(points):,} log points stored; {len(checkpoints)} checkpoints (dashed)</p>'
            + "<h2>Cost</h2>" + cost + _gate(reads, job_id)
            + "<h2>History</h2>" + _history(reads.events(job_id))
            + "<h2>Fields</h2>" + table(("FIELD", "VALUE"), fields))
    return 200, page(f"Job {job_id} · {row.agent}", body, active="/", nonce=nonce)


def pipelines_page(ft: Any, nonce: str) -> tuple[int, str]:
    agents = ft.config.agents
    edges = {name: list(a.depends_on) for name, a in agents.items()}
    reads = ft.reads()
    states = reads.latest_by_agent() if reads is not None else {}
    linked = {n for n, ups in edges.items() if ups} | {u for ups in edges.values() for u in ups}
    body = pipeline_graph({n: edges[n] for n in edges if n in linked}, states) if linked else \
        '<p class="muted">No agent depends on another (depends_on).</p>'
    alone = sorted(set(edges) - linked)
    if alone:
        body += f'<p class="muted">Agents outside any pipeline: {esc(", ".join(alone))}</p>'
    return 200, page("Pipelines", body, active="/pipelines", nonce=nonce)


def spend_page(ft: Any, nonce: str) -> tuple[int, str]:
    reads = ft.reads()
    rows = reads.spend_by_month() if reads is not None else []
    budget = ft.config.budget
    months: dict[str, float] = {}
    for r in rows:
        months[r.month] = months.get(r.month, 0.0) + r.actual
    per_month = budget.total * (30 * 86400.0) / budget.period if budget.total is not None else None
    head = ""
    if budget.total is not None and reads is not None:
        now = utcnow()
        spent = reads.spent_in(now - timedelta(seconds=budget.period), now)
        committed = reads.committed()
        head = (f"<p>Budget: {esc(f'${spent:,.2f} spent and ${committed:,.2f} committed of ${budget.total:,.2f}')}"
                f" over {esc(f'{budget.period / 86400:g} days')} "
                f"{bar(spent + committed, budget.total)}</p>")
    else:
        head = '<p class="muted">No [budget] total is configured.</p>'
    summary = [tr([esc(m), esc(f"${v:,.2f}"), esc(f"${per_month:,.2f}" if per_month else "-"),
                   bar(v, per_month or max(months.values()))]) for m, v in months.items()]
    detail = [tr([esc(r.month), esc(r.agent), esc(r.provider), esc(r.jobs), esc(f"${r.estimated:,.2f}"),
                  esc(f"${r.actual:,.2f}")]) for r in rows]
    body = (head + "<h2>By month</h2>" + table(("MONTH", "SPENT", "BUDGET A MONTH", ""), summary)
            + "<h2>By agent and provider</h2>"
            + table(("MONTH", "AGENT", "PROVIDER", "JOBS", "ESTIMATED", "COST"), detail))
    return 200, page("Spend", body, active="/spend", nonce=nonce)


def providers_page(ft: Any, nonce: str) -> tuple[int, str]:
    from ftctl.providers.registry import KINDS

    reads = ft.reads()
    learned = {r.name: r for r in reads.provider_rows()} if reads is not None else {}
    rows = []
    for name in sorted(set(ft.config.providers) | set(learned)):
        section = ft.config.providers.get(name)
        r = learned.get(name)
        kind = section.kind if section is not None else "(not configured)"
        ends = _ends(KINDS.get(kind), section)
        limit = (f"{r.learned_limit} (since {r.learned_at:%Y-%m-%d %H:%M})" if r is not None and r.learned_limit
                 is not None and r.learned_at else "-")
        pause = "-"
        if r is not None and r.paused_why:
            pause = f"{r.paused_why}: {r.paused_message or ''}" + (
                f" (until {r.paused_until:%Y-%m-%d %H:%M} UTC)" if r.paused_until else "")
        slots = f"{r.slots_used}/{r.slots_limit}" if r is not None and r.slots_limit is not None else "-"
        rows.append(tr([esc(name), esc(kind), esc(getattr(section, "concurrency", "-")), esc(slots), esc(limit),
                        f'<span class="err">{esc(pause)}</span>' if pause != "-" else "-", esc(ends or "-")]))
    body = table(("PROVIDER", "KIND", "CONCURRENCY", "SLOTS", "LEARNED LIMIT", "PAUSED", "FINE-TUNING ENDS"), rows)
    return 200, page("Providers", body, active="/providers", nonce=nonce)


def _ends(descriptor, section) -> str | None:
    """The end of fine-tuning its descriptor knows (or the config overrides), with its source."""
    life = getattr(descriptor, "lifecycle", None)
    if life is None:
        return None
    fact = life.until(getattr(section, "accepts_jobs_until", None)) or life.deprecated
    if fact is None:
        return None
    return f"{fact.what}: {fact.date or 'date not given'} ({fact.source})"
