"""Prometheus metrics (optional): `[metrics] listen = "127.0.0.1:9464"`.

Jobs by state and provider, slots in use and allowed, the reconcile step's
duration, provider errors by class, and estimated and actual cost. The
prometheus-client package is imported only when metrics are configured.
"""

from __future__ import annotations

from typing import Any

from ftctl.controller.ledger.states import STATES


class MetricsUnavailable(Exception):
    """The endpoint cannot listen (one line)."""


class Metrics:
    def __init__(self, listen: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry()
        self.jobs = Gauge("ftctl_jobs", "Jobs by state and provider", ["provider", "state"], registry=self.registry)
        self.slots_used = Gauge("ftctl_slots_in_use", "Jobs holding a provider slot (ours and others')",
                                ["provider"], registry=self.registry)
        self.slots_allowed = Gauge("ftctl_slots_allowed", "Concurrent jobs allowed now (learned or configured)",
                                   ["provider"], registry=self.registry)
        self.reconcile = Histogram("ftctl_reconcile_seconds", "Duration of one reconcile pass",
                                   buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                   registry=self.registry)
        self.errors = Counter("ftctl_provider_errors", "Failed provider calls by class", ["provider", "class"],
                              registry=self.registry)
        self.estimated = Gauge("ftctl_cost_estimated_dollars", "Sum of job estimates", ["provider"],
                               registry=self.registry)
        self.actual = Gauge("ftctl_cost_actual_dollars", "Sum of costs the providers reported", ["provider"],
                            registry=self.registry)
        self.ticks = Counter("ftctl_ticks", "Reconcile passes completed", registry=self.registry)
        self.leading = Gauge("ftctl_leader", "1 on the daemon that leads the database, 0 on a standby", ["host"],
                             registry=self.registry)
        self.renewals = Counter("ftctl_lease_renewals", "Leases renewed by this daemon", registry=self.registry)
        try:
            self.server, self.thread = start_http_server(int(port), addr=host or "127.0.0.1",
                                                         registry=self.registry)
        except OSError as exc:
            raise MetricsUnavailable(f"metrics.listen {listen}: {exc.strerror or exc}") from None

    def observe(self, result: Any, seconds: float, rows: list[tuple[str, str, int, float, float]]) -> None:
        """rows: (provider, state, jobs, estimated, actual) from the store."""
        self.reconcile.observe(seconds)
        self.ticks.inc()
        providers = {r[0] for r in rows} | set(result.slots)
        for provider in providers:
            for state in STATES:
                self.jobs.labels(provider, state).set(0)
        estimated: dict[str, float] = {}
        actual: dict[str, float] = {}
        for provider, state, n, est, act in rows:
            self.jobs.labels(provider, state).set(n)
            estimated[provider] = estimated.get(provider, 0.0) + (est or 0.0)
            actual[provider] = actual.get(provider, 0.0) + (act or 0.0)
        for provider in providers:
            self.estimated.labels(provider).set(estimated.get(provider, 0.0))
            self.actual.labels(provider).set(actual.get(provider, 0.0))
        for name, slots in result.slots.items():
            self.slots_used.labels(name).set(slots.used)
            self.slots_allowed.labels(name).set(slots.limit)
        for provider, kind in result.errors:
            self.errors.labels(provider, kind).inc()

    def leader(self, host: str, leading: bool) -> None:
        self.leading.labels(host).set(1 if leading else 0)

    def renewed(self) -> None:
        self.renewals.inc()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
