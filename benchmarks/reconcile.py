"""How long the reconcile step and a whole tick take as the job count grows.

Prints, for N jobs: the pure decide() step, a full tick (SQLite store and
the simulated service, steady state: every job running), and both as a ratio
to the same measurements on a 10-job baseline taken in the same run.

    .venv/bin/python benchmarks/reconcile.py [N ...]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftctl.controller.engine import decide as rc  # noqa: E402
from ftctl.controller.config import load_config  # noqa: E402
from ftctl.controller.engine.tick import Ticker  # noqa: E402
from ftctl.controller.preflight.submit import plan_submissions, store_submissions  # noqa: E402
from ftctl.models import Store  # noqa: E402
from ftctl.providers import build_provider  # noqa: E402
from ftctl.providers.base import ProviderJob  # noqa: E402

NOW = datetime(2026, 1, 5, 9, 0, 0)


def best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def pure_step(n: int) -> float:
    jobs = [rc.JobView(id=i, agent=f"a{i}", provider="sim", state="running" if i % 2 else "prepared",
                       attempt=1, provider_job_id=f"p{i}" if i % 2 else None, created_at=NOW)
            for i in range(n)]
    listing = tuple(ProviderJob(id=f"p{i}", status="running", raw_status="RUNNING") for i in range(1, n, 2))
    pv = rc.ProviderView(name="sim", configured_limit=n, jobs=listing)
    policy = rc.Policy()
    return best_of(lambda: rc.decide(jobs, {"sim": pv}, NOW, policy, random.Random(0)))


def full_tick(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "data").mkdir()
        (d / "data" / "x.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
        agents = "".join(f'[agents.a{i}]\nprovider = "sim"\nmodel = "open-mistral-7b"\ntraining_file = "data/x.jsonl"\n'
                         for i in range(n))
        (d / "c.toml").write_text(f'[providers.sim]\nkind = "simulated"\nconcurrency = {n}\n'
                                  f'queue_time = "0s"\nvalidate_time = "0s"\ntrain_time = "1h"\n' + agents)
        cfg = load_config(d / "c.toml")
        store = Store(cfg.database_url)
        store_submissions(store, plan_submissions(cfg, [], all_agents=True))
        clock = [NOW]
        now = lambda: clock[0]  # noqa: E731
        sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(lambda: clock[0].timestamp()))
        rec = Ticker(cfg, store, {"sim": sim}, clock=now, rng=random.Random(0))
        rec.tick()  # admit everyone
        clock[0] += timedelta(seconds=1)
        rec.tick()  # everyone running
        assert store.count_by_state() == {"running": n}, store.count_by_state()
        t = best_of(rec.tick, repeat=3)
        rec.close()
        store.close()
        return t


def main(sizes: list[int]) -> None:
    from ftctl.controller.service.logs import configure

    configure("error")
    base_pure, base_tick = pure_step(10), full_tick(10)
    print(f"baseline (10 jobs): decide {base_pure * 1e3:.3f} ms, tick {base_tick * 1e3:.1f} ms")
    print(f"{'jobs':>7} {'decide ms':>10} {'x base':>8} {'tick ms':>9} {'x base':>8} {'tick us/job':>12}")
    for n in sizes:
        p, t = pure_step(n), full_tick(n)
        print(f"{n:>7} {p * 1e3:>10.2f} {p / base_pure:>8.1f} {t * 1e3:>9.1f} {t / base_tick:>8.1f} "
              f"{t / n * 1e6:>12.1f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
