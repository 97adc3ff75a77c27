"""`show` answers from the read connection alone (issue 18.12): its training
curves and its evaluation gate's run come without the ORM, the Store or
SQLAlchemy (a second of imports), and say what the store's own reads say."""

import random
import subprocess
import sys
import tempfile

import ftctl
from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.engine.trainlogs import LogFetcher
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.controller.records import evaluation_dict, training_summary
from ftctl.models import Evaluation, Store
from ftctl.providers import build_provider


def _trained(make_config, clock):
    """qa succeeded on the simulated service, its log read; an evaluation run stored for it."""
    path = make_config(agents=("qa",), train_time="10s")
    cfg = load_config(path)
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    ticker = Ticker(cfg, store, {"sim": sim}, clock=clock, rng=random.Random(0))
    logs = LogFetcher(cfg, store, clock=clock, providers={"sim": sim})
    for _ in range(12):
        ticker.tick()
        logs.run_once()
        clock.advance(3)
    (job,) = store.list_jobs()
    assert job.state == "succeeded" and job.promotion is not None
    with store.write() as s:
        s.add(Evaluation(job_id=job.id, metric="exact", file="eval.jsonl", file_hash="0" * 64, examples=4,
                         candidate_model=job.fine_tuned_model, compare_model="open-mistral-7b", min_improvement=0.1,
                         started_at=clock.now, candidate_score=0.75, compare_score=0.5, improvement=0.25))
    run = store.evaluations([job.id])[job.id]
    store.add_eval_answers(run.id, [(0, "candidate", "a", 1.0), (0, "compare", "b", 0.0), (1, "candidate", "c", 1.0)],
                           clock.now)
    return path, cfg, store, job


def test_show_says_what_the_store_says_without_opening_it(make_config, clock):
    path, cfg, store, job = _trained(make_config, clock)
    with ftctl.Ftctl(cfg) as ft:
        shown = ft.show(job.id)
        assert ft._store is None  # the read connection only
    run = store.evaluations([job.id])[job.id]
    answered = sum(n for n, _ in store.eval_progress([run.id])[run.id].values())
    assert shown["evaluation"] == evaluation_dict(run, answered) and shown["evaluation"]["answered"] == 3
    assert shown["training"] == training_summary(store.log_points(job.id, job.provider_job_id))
    assert [s for s, _ in shown["training"]["train_loss"]] == list(range(1, 11))
    store.close()


def test_the_show_command_imports_no_sqlalchemy_and_no_orm(make_config, clock):
    path, _, store, job = _trained(make_config, clock)
    store.close()
    code = ("import sys\nfrom ftctl.controller.cli import main\n"
            "sys.argv = ['ftctl', '--config', sys.argv[1], 'show', sys.argv[2]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'sqlmodel', 'alembic', "
            "'transitions', 'apscheduler'}), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, str(path), str(job.id)], capture_output=True, text=True,
                       cwd=tempfile.gettempdir())
    assert p.returncode == 0 and p.stderr.strip().splitlines()[-1] == "[]", p.stderr
    assert "train_loss" in p.stdout and job.fine_tuned_model in p.stdout
