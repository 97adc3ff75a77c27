"""`ftctl demo --provider ray`: the pipeline and the gate on a Ray head of
this machine, with ftctl's own trainer and a tiny model built from a config
(a 2-layer Llama and a tokenizer trained on the demo's data): no network,
no key, no GPU.

Three agents: `qa` is fully fine-tuned on five questions and must pass an
exact-match gate against the base model (it memorised them: promoted);
`legal` trains two LoRA steps at a tiny learning rate and must pass the
same kind of gate (it learned nothing: rejected); `conversation` trains on
qa's model (model = "@qa"). The demo starts its own head on free ports
unless `--address` names a running one, and stops what it started.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

QA = (("What is the capital of France?", "Paris"), ("Name the largest planet.", "Jupiter"),
      ("What colour is the sky?", "blue"), ("How many legs has a spider?", "eight"),
      ("Which metal is liquid at room temperature?", "mercury"))
LEGAL = (("Translate 'cat' to French.", "chat"), ("Translate 'dog' to French.", "chien"),
         ("Translate 'house' to French.", "maison"))
AGENTS = ("qa", "legal", "conversation")

CONFIG = """\
[controller]
database = "sqlite:///ftctl.db"
poll_interval = "0.5s"

[retry]
max_attempts = 3
backoff_initial = "1s"
backoff_max = "4s"

[logs]
interval = "1s"

[providers.gpu]
kind = "ray"
address = "{address}"
artifacts = "artifacts"        # where models land: a path every worker sees
gpus_per_job = 0               # the demo trains on CPUs
cpus_per_job = 1
concurrency = 2
python = "{python}"
runtime_env = {{ env_vars = {{ HF_HUB_OFFLINE = "1", TRANSFORMERS_OFFLINE = "1", FTCTL_TRAIN_THREADS = "1" }} }}

[agents.qa]
provider = "gpu"
model = "{base}"
training_file = "data/qa.jsonl"
hyperparameters = {{ lora = false, training_steps = 60, learning_rate = 0.003, batch_size = 5, checkpoint_steps = 30 }}

[agents.qa.eval]
file = "data/qa.jsonl"
metric = "exact"
min_improvement = 0.5
max_tokens = 12

[agents.legal]
provider = "gpu"
model = "{base}"
training_file = "data/legal.jsonl"
hyperparameters = {{ training_steps = 2, learning_rate = 0.00001, batch_size = 3 }}

[agents.legal.eval]
file = "data/legal.jsonl"
metric = "exact"
min_improvement = 0.5
max_tokens = 12

[agents.conversation]
provider = "gpu"
model = "@qa"                  # trains on qa's fine-tuned model
depends_on = ["qa"]
training_file = "data/legal.jsonl"
hyperparameters = {{ training_steps = 5, learning_rate = 0.001, batch_size = 3 }}
"""


def write_pairs(path: Path, pairs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return path


def write_ray_demo(directory: Path, address: str, base: Path | None = None) -> Path:
    """The data, a tiny base model built from a config (or `base`), and
    controller.toml. A folder that holds a demo already (`--dir` again)
    keeps its config, pointed at this head: what was trained is not trained
    again (the same jobs are twins of the succeeded ones)."""
    import re

    config = directory / "controller.toml"
    if config.exists():
        config.write_text(re.sub(r'(?m)^address = "[^"]*"', f'address = "{address}"', config.read_text(), count=1))
        return config
    files = [write_pairs(directory / "data" / "qa.jsonl", QA), write_pairs(directory / "data" / "legal.jsonl", LEGAL)]
    if base is None:
        from ftctl.providers.trainer.tiny import build

        base = build(directory / "base-model", files)
    config.write_text(CONFIG.format(address=address, python=sys.executable, base=base))
    return config


class DemoError(Exception):
    pass


def reachable(address: str) -> None:
    """A head given with --address answers, or the demo stops in one line."""
    import urllib.request

    try:
        with urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=5):
            return
    except (OSError, ValueError) as exc:
        raise DemoError(f"--address {address}: no Ray dashboard answers there "
                        f"({getattr(exc, 'reason', exc).__class__.__name__})") from None


def run_ray_demo(console: Console, directory: Path | None = None, *, address: str | None = None,
                 timeout: float = 600.0) -> int:
    from ftctl.providers.ray.local import LocalHead

    import importlib.util

    missing = [m for m in ("ray", "trl", "peft", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(f"--provider ray needs {', '.join(missing)}: pip install '.[ray,train]' from a checkout")
    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ftctl-demo-ray-"))
    workdir.mkdir(parents=True, exist_ok=True)
    head = None
    try:
        if address is None:
            console.print("starting a Ray head on this machine (ray start --head, free ports) ...")
            head = LocalHead(num_cpus=2).start()
            address = head.address
        else:
            reachable(address)
        console.print(f"ftctl demo on Ray at {address}, in {workdir}; building a tiny model (2 layers, hidden 64)")
        config_path = write_ray_demo(workdir, address)
        console.print("qa: full fine-tuning, gated (exact match, +0.5 over the base model); legal: 2 LoRA steps,\n"
                      "gated the same way; conversation: trains on qa's model\n")
        code, jobs, seconds = tick_until_done(console, config_path, timeout=timeout)
        return _summary(console, jobs, seconds, address, config_path) if code == 0 else code
    finally:
        if head is not None:
            head.stop()
            console.print("stopped the Ray head")
        if directory is None:
            shutil.rmtree(workdir, ignore_errors=True)


def tick_until_done(console: Console, config_path: Path, *, timeout: float) -> tuple[int, dict, float]:
    """Submit every agent, then tick (as the daemon does) until all are terminal."""
    from rich.live import Live

    from ftctl.controller.cli.views import status_table
    from ftctl.controller.config import load_config
    from ftctl.controller.engine.tick import Ticker
    from ftctl.controller.preflight.submit import plan_submissions, store_submissions
    from ftctl.controller.service.logs import configure
    from ftctl.models import Store

    log_file = open(config_path.parent / "ftctl.log", "a", encoding="utf-8")
    configure("info", stream=log_file, json=True)
    config = load_config(config_path)
    store = Store(config.database_url)
    store.acquire_daemon_lock()
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    ticker = Ticker(config, store)
    started = time.monotonic()
    try:
        with Live(status_table(store.list_jobs(), title="ftctl status"), console=console, refresh_per_second=4,
                  transient=not console.is_terminal) as live:
            while True:
                result = ticker.tick()
                live.update(status_table(store.list_jobs(), title=f"ftctl status: {result.summary()}"))
                if result.all_terminal:
                    return 0, {j.agent: j for j in store.list_jobs()}, time.monotonic() - started
                if time.monotonic() - started > timeout:
                    console.print(f"the demo did not finish in {timeout:g}s", markup=False)
                    return 1, {j.agent: j for j in store.list_jobs()}, time.monotonic() - started
                time.sleep(config.controller.poll_interval)
    finally:
        ticker.close()
        store.close()
        log_file.close()


def _summary(console: Console, jobs: dict, seconds: float, address: str, config_path: Path) -> int:
    from ftctl.controller.records import reason_text

    ok = (all(jobs.get(a) is not None and jobs[a].state == "succeeded" for a in AGENTS)
          and jobs["qa"].promotion == "promoted" and jobs["legal"].promotion == "rejected"
          and jobs["conversation"].base_model == jobs["qa"].fine_tuned_model)
    console.print(f"\n{sum(j.state == 'succeeded' for j in jobs.values())}/{len(AGENTS)} agents succeeded on Ray "
                  f"in {seconds:.1f}s", markup=False)
    for agent in AGENTS:
        job = jobs.get(agent)
        if job is None:
            continue
        console.print(f"  {agent}: {job.state}, Ray job {job.provider_job_id}, model {job.fine_tuned_model}",
                      markup=False, soft_wrap=True)
        gate = reason_text(job) if job.promotion in ("promoted", "rejected") else None
        if gate and job.reason_code == "gate":
            console.print(f"    gate: {gate}", markup=False, soft_wrap=True)
    console.print(f"  pipeline: conversation trained on {jobs['conversation'].base_model}"
                  if "conversation" in jobs else "", markup=False, soft_wrap=True)
    return 0 if ok else 1
