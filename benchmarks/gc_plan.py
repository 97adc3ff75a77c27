"""What one [retention] pass costs to decide: Collector.plan() (the store's
facts, then the pure rules) over N succeeded jobs of 50 agents, each
promoted in turn (all but the newest superseded), a tenth rejected, one
uploaded file. Prints milliseconds per plan and per 1,000 jobs.

    .venv/bin/python benchmarks/gc_plan.py [N ...]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scale_data import Job, build_database, stamp, training_file, utcnow, write_config  # noqa: E402


def main(sizes: list[int]) -> None:
    from ftctl.controller.config import load_config
    from ftctl.controller.service.gc import Collector
    from ftctl.models import Store

    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            start = utcnow() - timedelta(days=90)
            jobs = [Job("succeeded", start + timedelta(minutes=i), agent=f"a{i % 50}", at_provider="SUCCESS")
                    for i in range(n)]
            file, digest = training_file(d)
            cfg_path = write_config(d, url=None, concurrency=2)
            cfg_path.write_text(cfg_path.read_text() + '\n[retention]\nrejected_after = "7d"\n'
                                'superseded_after = "30d"\nfiles_after = "30d"\n')
            db, _ = build_database(d, jobs, file, digest, file_id="file-1")
            with sqlite3.connect(db) as c:
                c.execute("UPDATE jobs SET promotion = 'rejected' WHERE id % 10 = 0")
                c.execute("INSERT INTO job_events (job_id, at, from_state, to_state, trigger, name, event_id) "
                          "SELECT id, ?, 'succeeded', 'succeeded', 'reject', 'rejected', 'evt_' || id FROM jobs "
                          "WHERE promotion = 'rejected'", (stamp(start + timedelta(days=1)),))
            cfg = load_config(cfg_path)
            store = Store(cfg.database_url)
            gc = Collector(cfg, store)
            gc.plan()  # warm
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                plan = gc.plan()
                runs.append(time.perf_counter() - t)
            best = min(runs) * 1000
            print(f"{n:>7,} jobs: plan {best:8.1f} ms ({best / n * 1000:.2f} ms per 1,000 jobs), "
                  f"{len(plan):,} to delete")
            store.close()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10000, 50000])
