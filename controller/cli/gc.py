"""`ftctl gc`: apply `[retention]` now (`--dry-run`: say what would go)."""

from __future__ import annotations

from typing import Annotated

import typer

from ftctl.controller.cli.app import EXIT_FAILED, EXIT_REFUSED, app, die, emit_json, get_config, open_store, out


@app.command()
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted, delete nothing")] = False,
       as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Delete at the providers what [retention] says may go (the daemon does it on its own every
    [retention] interval): rejected and superseded models, training files no job needs, checkpoints
    but the model's. Never an exported model, a pipeline stage's base, a file a job may still use."""
    from ftctl.controller.service.gc import Collector, describe
    from ftctl.controller.service.logs import configure
    from ftctl.models import LockHeld

    config = get_config()
    if config.retention is None:
        die(f"{config.path}: no [retention] section: nothing is ever deleted (see README, Retention)", EXIT_REFUSED)
    configure("warning")
    store = open_store(config)
    collector = Collector(config, store)
    try:
        if dry_run:
            plan = collector.plan()
            rows = [{"kind": d.kind, "provider": d.provider, "target": d.target, "job_id": d.job_id,
                     "rule": d.rule, "fee_per_month": d.fee_per_month} for d in plan]
            saves = round(sum(d.fee_per_month for d in plan), 2)
            if as_json:
                emit_json({"dry_run": True, "deletions": rows, "saves_per_month": saves})
                return
            for d in plan:
                out.print(f"would delete {describe(d)}" + (f": ${d.fee_per_month:,.2f} a month"
                                                           if d.fee_per_month else ""), markup=False)
            out.print(f"{len(plan)} to delete, saving ${saves:,.2f} a month in storage fees", markup=False)
            return
        try:
            store.acquire_daemon_lock()
        except LockHeld as exc:
            die(f"{exc}; it applies [retention] every [retention] interval itself", EXIT_REFUSED)
        collector.guard = store.assert_lock_held
        done = collector.run_once(limit=10_000)
        left = store.deletions(done=False)
    finally:
        collector.close()
        store.close()
    saves = round(sum(r["fee_per_month"] for r in done), 2)
    if as_json:
        emit_json({"dry_run": False, "deletions": done, "saves_per_month": saves, "failed": len(left)})
    else:
        for r in done:
            out.print(f"deleted {r['kind']} {r['target']} at {r['provider']} (job {r['job_id']}, {r['rule']})"
                      + (" - it was gone already" if r["outcome"] == "gone" else ""), markup=False)
        out.print(f"{len(done)} deleted, saving ${saves:,.2f} a month in storage fees"
                  + (f"; {len(left)} failed (tried again next time)" if left else ""), markup=False)
    if left:
        raise typer.Exit(EXIT_FAILED)
