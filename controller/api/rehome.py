"""What the Python API does for `ftctl rehome`: plan the moves of promoted
models to another provider, record golden sets, store the jobs. A part of
`ftctl.Ftctl`; the rules are in `controller.preflight.rehome`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Rehoming:
    config: Any
    store: Any
    _writing: Any
    wake: Any

    def rehome(self, agents: Sequence[str] = (), *, all_agents: bool = False, to: str | None = None,
               model: str | None = None, golden: int | None = None, min_improvement: float | None = None,
               metric: str | None = None, plan: bool = False, allow_pii: bool = False,
               hyperparameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Train each agent's promoted spec on provider `to` as a new job,
        promoted only on parity with the model it replaces (`golden`: first
        record that model's answers to N prompts of its training data, and
        use them as the expected answers). `plan`: say what would move, to
        where, at what cost and by when the old models stop answering, and
        change nothing. One dict a move, with `job_id` once stored."""
        from ftctl.controller.preflight.rehome import SubmitError, plan_rehomes, record_golden, store_rehomes
        from ftctl.core import BadInput, FtctlError

        try:
            moves = plan_rehomes(self.config, self.store(), list(agents), all_agents=all_agents, to=to, model=model,
                                 golden=golden, min_improvement=min_improvement, metric=metric, allow_pii=allow_pii,
                                 hyperparameters=hyperparameters)
        except SubmitError as exc:
            raise BadInput(str(exc)) from None
        if plan:
            return [{**m.as_dict(), "job_id": None, "note": m.skip} for m in moves]
        try:  # asks the promoted models: nothing is stored unless every one answered
            moves = [record_golden(self.config, m) if m.golden and not m.skip else m for m in moves]
        except SubmitError as exc:
            raise FtctlError(str(exc)) from None
        with self._writing():
            stored = store_rehomes(self.store(create=True), moves)
        if any(job_id is not None and not note for _, job_id, note in stored):
            self.wake("rehome")
        return [{**m.as_dict(), "job_id": job_id, "note": note or None} for m, job_id, note in stored]
