"""What is known about the end of a provider's fine-tuning, as data.

Each provider kind's descriptor carries a `Lifecycle`: the date after which
it takes no new jobs, the staged cutoffs before it (that close it to some
accounts first), and its base models' shutdown dates. Every fact names its
`source` and the date it was `checked`, as the price table's entries do; a
fact whose date is not known (Mistral's deprecation) still says so.

`[providers.NAME] accepts_jobs_until = "YYYY-MM-DD"` overrides the shipped
date for one configured provider (`Lifecycle.until`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

# a fixed "today" for tests and rehearsals (`FTCTL_TODAY=2027-01-07`): the
# dates below are compared with it instead of the system's date
TODAY_ENV = "FTCTL_TODAY"


def today(default: date | None = None) -> date:
    """$FTCTL_TODAY (YYYY-MM-DD) where it is set; else `default` (the date of
    the daemon's clock), else today in UTC."""
    fixed = os.environ.get(TODAY_ENV)
    if fixed:
        try:
            return date.fromisoformat(fixed.strip())
        except ValueError:
            raise ValueError(f"${TODAY_ENV}: {fixed[:20]!r} is not a date (YYYY-MM-DD)") from None
    return default or datetime.now(timezone.utc).date()


@dataclass(frozen=True)
class EndFact:
    """One fact about the end of fine-tuning (or of a model)."""

    what: str  # in words: "no new fine-tuning jobs", "fine-tuning deprecated"
    date: date | None  # None: the end is announced, its date is not
    source: str
    checked: str  # when the fact was last compared with its source (YYYY-MM-DD; "" for the config's own)
    note: str = ""


@dataclass(frozen=True)
class Lifecycle:
    # after this date no new jobs are taken (from anyone)
    accepts_jobs_until: EndFact | None = None
    # cutoffs before that, for some accounts only (told, not enforced: whether
    # an account is hit shows when the provider refuses its create)
    stages: tuple[EndFact, ...] = ()
    # fine-tuning is deprecated, end date unknown
    deprecated: EndFact | None = None
    # base model -> its shutdown (a fine-tuned model stops answering with it)
    models: dict[str, EndFact] = field(default_factory=dict)

    def until(self, override: date | None) -> EndFact | None:
        """The last day new jobs are taken, with the config's override first."""
        if override is not None:
            return EndFact("no new fine-tuning jobs", override, "controller.toml (accepts_jobs_until)", "")
        return self.accepts_jobs_until

    def model_end(self, model: str) -> EndFact | None:
        """A base model's shutdown, by exact name, then by the longest listed prefix."""
        if model in self.models:
            return self.models[model]
        found = [k for k in self.models if model.startswith(k)]
        return self.models[max(found, key=len)] if found else None


OPENAI_DEPRECATIONS = "https://platform.openai.com/docs/deprecations"

OPENAI = Lifecycle(
    accepts_jobs_until=EndFact("no new fine-tuning jobs", date(2027, 1, 6), OPENAI_DEPRECATIONS, "2026-12-03",
                               "self-serve fine-tuning winds down (notice of 2026-05-07)"),
    stages=(
        EndFact("no new jobs for organisations that never fine-tuned", date(2026, 5, 7), OPENAI_DEPRECATIONS,
                "2026-12-03"),
        EndFact("no new jobs for organisations without fine-tuned-model inference in 60 days",
                date(2026, 7, 2), OPENAI_DEPRECATIONS, "2026-12-03"),
    ),
    models={"gpt-4.1-nano": EndFact("base model shut down", date(2026, 10, 23), OPENAI_DEPRECATIONS, "2026-12-03",
                                    "its fine-tuned models stop answering")},
)

MISTRAL = Lifecycle(
    deprecated=EndFact("fine-tuning deprecated", None, "https://docs.mistral.ai/ (Deprecated features); "
                       "mistralai/client-python#450 reports a 422 on every create", "2026-12-03",
                       "no longer actively supported, no replacement, no end date given"),
)
