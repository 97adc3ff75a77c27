"""What the Python API says and does about models: each agent's promoted
model, every model with its promotion, the gate overridden by hand, and the
[export] file. A part of `ftctl.Ftctl`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Delivery:
    config: Any
    _writing: Any  # ftctl.Ftctl's: a database that cannot take the write is one line

    def models(self, *, agents: Sequence[str] | None = None,
               providers: Sequence[str] | None = None) -> dict[str, str]:
        """Each agent's newest promoted model id (what [export] writes; one grouped query)."""
        return {m.agent: m.model for m in self.model_rows(agents=agents, providers=providers)}

    def model_rows(self, *, agents: Sequence[str] | None = None, providers: Sequence[str] | None = None) -> list[Any]:
        """Each agent's newest promoted model: (agent, model, job_id, provider,
        finished_at: when it was promoted), by agent."""
        from ftctl.models.reads import Filter

        reads = self.reads()
        return reads.promoted_models(Filter(None, agents, providers)) if reads is not None else []

    def model_records(self, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """`model_rows` as records, the shape `all_models` gives (records.model_dict)."""
        from ftctl.controller.records import model_dict

        reads = self.reads()
        return [model_dict(reads.job(m.job_id)) for m in rows] if reads is not None else []

    def all_models(self, *, agents: Sequence[str] | None = None,
                   providers: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every succeeded job's model with its promotion: candidates,
        models being evaluated, promoted and rejected ones."""
        from ftctl.models.reads import Filter
        from ftctl.controller.records import model_dict

        reads = self.reads()
        return [model_dict(j) for j in reads.jobs(Filter(["succeeded"], agents, providers))] if reads else []

    # -- the gate, overridden -----------------------------------------------------------

    def promote(self, job_id: int) -> dict[str, Any]:
        """Make a succeeded job's model its agent's, whatever its evaluation
        said (or before it ends); recorded in the job's history."""
        return self._gate(job_id, "promote")

    def reject(self, job_id: int) -> dict[str, Any]:
        """Never deliver a succeeded job's model (it leaves the export file)."""
        return self._gate(job_id, "reject")

    def _gate(self, job_id: int, trigger: str) -> dict[str, Any]:
        from ftctl.controller.engine.jobs import StaleState, fire_promotion
        from ftctl.core import Refused
        from ftctl.controller.ledger.reasons import Reason
        from ftctl.controller.ledger.states import InvalidTransition
        from ftctl.controller.records import job_dict

        row = self._row(job_id)
        if row.state != "succeeded" or row.promotion is None:
            raise Refused(f"job {job_id} is {row.state}: only a succeeded job's model can be {trigger}d")
        reason = Reason("promoted_user" if trigger == "promote" else "rejected_user")
        try:
            with self._writing():
                fire_promotion(self.store(), job_id, trigger, reason=reason, expect=row.promotion)
        except InvalidTransition as exc:
            raise Refused(f"job {job_id}: {exc}") from None
        except StaleState:
            raise Refused(f"job {job_id} changed while this command ran; look at `ftctl show {job_id}` "
                          f"and try again") from None
        self.export()
        return job_dict(self._row(job_id))

    def export(self) -> bool:
        """Rewrite [export]'s file if the set of promoted models changed (the
        daemon does it too, every tick); True if it was written."""
        conf = self.config.export
        store = self.store()
        if conf is None or store is None:
            return False
        from ftctl.controller.engine.export import sync
        from ftctl.core import FtctlError

        try:
            return sync(self.config.resolve(conf.path), conf.fmt, store.promoted_models())
        except OSError as exc:
            raise FtctlError(f"export.path: cannot write {conf.path} ({exc.__class__.__name__})") from None
