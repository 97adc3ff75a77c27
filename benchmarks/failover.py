"""Takeover time on PostgreSQL: three daemons on one database, the leader
SIGKILLed again and again; how long until another leads (and ticks).

    .venv/bin/python benchmarks/failover.py [KILLS] [LEASE] [POLL]

It starts a PostgreSQL server of its own (PostgreSQL 15's binaries, as the
test fixtures do) and the Mistral emulator in process, and prints the
takeover times (kill -> the new leader's first tick) against the goal of
one lease plus one poll interval.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.conftest: the PostgreSQL server, the daemon harness

from tests.conftest import (FAKE_KEY, KEY_ENV, Daemon, PostgresServer, ftctl_env, leader_of,  # noqa: E402
                            run_ftctl, start_emulator, write_remote_config)


def main(kills: int = 15, lease: float = 3.0, poll: float = 1.0) -> None:
    server = PostgresServer.create()
    work = Path(tempfile.mkdtemp(prefix="ftctl-failover-"))
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    rng = random.Random(1)
    takeovers: list[float] = []
    try:
        url = server.database("ftctl_failover")
        with start_emulator("mistral", work, limit=2, queue_time=0.5, validate_time=0.5, train_time=30) as srv:
            cfg = write_remote_config(work / "site", "mistral", srv.url, agents=tuple(f"a{i}" for i in range(4)),
                                      database=url, poll=f"{poll}s", timeout="2s")
            cfg.write_text(cfg.read_text().replace(f'poll_interval = "{poll}s"',
                                                   f'poll_interval = "{poll}s"\nlease = "{lease}s"'))
            run_ftctl("submit", "--all", config=cfg, env=env)
            daemons = [Daemon(cfg, env=env) for _ in range(3)]
            try:
                for _ in range(kills):
                    while leader_of(daemons) is None:
                        time.sleep(0.02)
                    time.sleep(rng.uniform(0.5, 2.0))
                    leader = leader_of(daemons)
                    leads_before = {id(d): sum(1 for line in d.lines if line["event"] == "leading") for d in daemons}
                    leader.kill()
                    killed = time.monotonic()
                    daemons.remove(leader)
                    daemons.append(Daemon(cfg, env=env))  # systemd restarts it; it stands by

                    def took_over():
                        new = leader_of(daemons)
                        return new is not None and sum(1 for line in new.lines if line["event"] == "leading") > \
                            leads_before.get(id(new), 0)

                    while not took_over():
                        time.sleep(0.01)
                    takeovers.append(time.monotonic() - killed)
                    print(f"kill {len(takeovers):2d}: takeover in {takeovers[-1]:.2f} s", flush=True)
            finally:
                for d in daemons:
                    d.kill()
    finally:
        server.destroy()
    goal = lease + poll
    ordered = sorted(takeovers)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    print(f"\n{len(takeovers)} takeovers, lease {lease:g} s, poll {poll:g} s")
    print(f"takeover p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s")
    print(f"goal: p95 <= lease + poll = {goal:.2f} s -> {'met' if p95 <= goal else 'NOT met'} "
          f"(p95 / goal = {p95 / goal:.2f})")


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:]]
    main(int(args[0]) if args else 15, *(args[1:3]))
