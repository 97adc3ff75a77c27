"""Reading the lines of waiting jobs: each provider's line is read in
order only as far as admission can go this tick, and its length counted in
the index; a job further back is shown with its provider's line as the last
tick saw it (ledger.reasons.shown). A part of `engine.tick.Ticker`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.policy import Budget
from ftctl.models import ProviderState
from ftctl.models.store import TICK_COLUMNS

# a line is read as far as the free slots go, and this many more: jobs the
# money left refuses as the tick commits it, one after another
LINE_MARGIN = 64
_CREATED = TICK_COLUMNS.index("created_at")


class Lines:
    store: Any
    _views: Any

    def _read_lines(self, views: list[rc.JobView], observed: dict[str, rc.ProviderView],
                    ceiling: float | None) -> list[rc.JobView]:
        """The head of each observed provider's line of waiting jobs: as many
        as its free slots could take, and LINE_MARGIN more (jobs the money
        left refuses as the tick commits it); with the budget on, only jobs
        within `ceiling`. A line read to its limit ends there (line_end)."""
        seen = {v.id for v in views}
        more: list[tuple] = []
        for name, pv in observed.items():
            if pv.jobs is None:  # nothing is admitted: the head is told why, the line shows it (rc.Line)
                want = LINE_MARGIN
            else:
                want = max(0, pv.configured_limit - len(pv.active() - pv.quote_ids)) + LINE_MARGIN
            head = self.store.line_head(name, want, ceiling)
            if len(head) >= want:
                observed[name] = replace(pv, line_end=(head[-1][_CREATED], head[-1][0]))
            more.extend(r for r in head if r[0] not in seen)
        return views + self._views(more) if more else views

    def _waiting_for_slot(self, decisions: list[rc.Decision], views: dict[int, Any],
                          states: dict[str, ProviderState], budget: Budget | None, left: float | None) -> int:
        """The jobs in the lines that wait for a slot (counted in the index):
        those the budget lets through, once this tick's admissions are committed."""
        lines = {name: s.line_code for name, s in states.items()}
        lines.update({d.name: d.reason.code for d in decisions if isinstance(d, rc.Line)})
        if left is not None:
            left -= sum(views[d.job_id].estimated_cost or 0.0 for d in decisions
                        if isinstance(d, rc.Submit) and d.client_token is None and d.job_id in views)
        ceiling = budget.ceiling(left) if budget else None
        return sum(self.store.count_in_line(name, ceiling) for name, code in sorted(lines.items()) if code == "slot")

