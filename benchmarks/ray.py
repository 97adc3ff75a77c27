"""The `ray` provider's figures, on a real local Ray head:

    .venv/bin/python benchmarks/ray.py [JOBS] [STEPS]

1. submit -> running: `ftctl submit` to the job's move to `running` (the
   daemon ticking every 0.5 s), against a bare `submit_job` to RUNNING of
   the same trainer through the SDK, measured in the same run.
2. The tick's CPU with JOBS (100) Ray jobs of ftctl's in flight, made the
   way users make them: `ftctl submit` and the daemon's ticks. Their
   trainer is a stand-in that holds its slot and sleeps (`python` points at
   it), a hundredth of a CPU each, so the head holds them all at once.
3. The trainer's overhead against a bare TRL loop on the same data, the
   same model and the same TrainingArguments (checkpoints included):
   `python -m ftctl.providers.trainer train` vs a script that calls
   SFTTrainer itself, alternated, STEPS (300) steps each; goal <= 1.10x.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# this file is named ray.py: its own folder must not shadow the ray package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from ftctl.controller.demo.ray_demo import QA, write_pairs  # noqa: E402
from ftctl.providers.ray.local import LocalHead  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FTCTL_TRAIN_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
BARE = r'''
import json, sys, time
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
import torch
torch.set_num_threads(1)
base, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = []
for line in open(data):
    m = json.loads(line)["messages"]
    rows.append({"prompt": m[:-1], "completion": m[-1:]})
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
args = SFTConfig(output_dir=out, per_device_train_batch_size=5, learning_rate=0.001, max_steps=steps, logging_steps=1,
                 save_strategy="steps", save_steps=50, report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
                 max_length=1024, dataloader_num_workers=0, completion_only_loss=True, num_train_epochs=1.0,
                 warmup_steps=0, gradient_accumulation_steps=1)
SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
model.save_pretrained(out + "/model"); tok.save_pretrained(out + "/model")
'''
SLEEPER = "#!/bin/sh\nexec sleep 3600\n"


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, timeout=900)
    return time.perf_counter() - started


def trainer_overhead(work: Path, base: Path, data: Path, steps: int, rounds: int = 3) -> None:
    (work / "bare.py").write_text(BARE)
    ours, bare = [], []
    for i in range(rounds):
        spec = {"job_id": i, "agent": "bench", "token": f"b-{i}", "base_model": str(base),
                "files": [[str(data), 1.0]], "output": str(work / f"ours-{i}"), "method": "sft",
                "hyperparameters": {"lora": False, "training_steps": steps, "learning_rate": 0.001,
                                    "batch_size": 5, "checkpoint_steps": 50}}
        ours.append(_timed([sys.executable, "-m", "ftctl.providers.trainer", "train", json.dumps(spec)]))
        bare.append(_timed([sys.executable, str(work / "bare.py"), str(base), str(data), str(work / f"bare-{i}"),
                            str(steps)]))
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"trainer overhead: ftctl trainer {o:.2f} s vs bare TRL loop {b:.2f} s, median of {rounds}, {steps} steps "
          f"of full fine-tuning, checkpoints every 50: {o / b:.3f}x (goal <= 1.10x)")


def site(work: Path, address: str, base: Path, agents: int, python: str, cpus: float) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(f"""\
        [controller]
        database = "sqlite:///ftctl.db"
        poll_interval = "0.5s"

        [providers.gpu]
        kind = "ray"
        address = "{address}"
        artifacts = "artifacts"
        gpus_per_job = 0
        cpus_per_job = {cpus}
        concurrency = {agents}
        python = "{python}"
        runtime_env = {{ env_vars = {{ HF_HUB_OFFLINE = "1", FTCTL_TRAIN_THREADS = "1" }} }}
        """)
    for i in range(agents):
        write_pairs(work / "data" / f"a{i}.jsonl", QA[: 1 + i % len(QA)] + ((f"question {i}", f"answer {i}"),))
        text += (f'\n[agents.a{i}]\nprovider = "gpu"\nmodel = "{base}"\ntraining_file = "data/a{i}.jsonl"\n'
                 f"hyperparameters = {{ training_steps = 200, checkpoint_steps = 100 }}\n")
    (work / "controller.toml").write_text(text)
    return work / "controller.toml"


def _states(config: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(config.parent / "ftctl.db")
    try:
        return [r[0] for r in db.execute("select state from jobs order by id")]
    finally:
        db.close()


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def latency(work: Path, head: LocalHead, base: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    config = site(work / "latency", head.address, base, 1, sys.executable, 1)
    daemon = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        time.sleep(2)  # the daemon up and ticking before the clock starts
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ftctl", "--config", str(config), "submit", "a0"], check=True,
                       capture_output=True, env=ENV)
        assert _wait(lambda: _states(config) == ["running"] or _states(config) == ["succeeded"], 300)
        ours = time.perf_counter() - started
    finally:
        daemon.kill()
        daemon.wait()
    client = JobSubmissionClient(head.address)
    started = time.perf_counter()
    job = client.submit_job(entrypoint=f"{sys.executable} -c 'import time; time.sleep(30)'",
                            entrypoint_num_cpus=1, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    assert _wait(lambda: client.get_job_status(job).value == "RUNNING", 300)
    bare = time.perf_counter() - started
    client.stop_job(job)
    print(f"submit -> running: ftctl {ours:.2f} s (submit, the daemon's next tick, Ray) vs a bare submit_job "
          f"{bare:.2f} s: {ours / bare:.2f}x")


def tick_cpu(work: Path, head: LocalHead, base: Path, jobs: int) -> None:
    sleeper = work / "sleeper"
    sleeper.write_text(SLEEPER)
    sleeper.chmod(0o755)
    config = site(work / "inflight", head.address, base, jobs, str(sleeper), 0.01)
    subprocess.run([sys.executable, "-m", "ftctl", "--config", str(config), "submit", "--all"], check=True,
                   capture_output=True, env=ENV)
    daemon = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(config), "daemon"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        assert _wait(lambda: _states(config).count("running") == jobs, 900), _states(config)
        pid = daemon.pid
        def cpu() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before, at = cpu(), time.perf_counter()
        time.sleep(30)
        used, wall = cpu() - before, time.perf_counter() - at
        ticks = wall / 0.5
        print(f"tick with {jobs} Ray jobs in flight: {used / ticks * 1000:.1f} ms of CPU a tick "
              f"({used:.2f} s of CPU in {wall:.0f} s at a 0.5 s poll: {100 * used / wall:.1f}% of a core)")
    finally:
        daemon.kill()
        daemon.wait()
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(head.address)
        for j in client.list_jobs():
            if j.status.value in ("PENDING", "RUNNING"):
                client.stop_job(j.submission_id)


def main(jobs: int = 100, steps: int = 300) -> None:
    from ftctl.providers.trainer.tiny import build

    work = Path(tempfile.mkdtemp(prefix="ftctl-bench-ray-"))
    data = write_pairs(work / "qa.jsonl", QA)
    base = build(work / "base", [data])
    trainer_overhead(work, base, data, steps)
    with LocalHead(num_cpus=2) as head:
        latency(work, head, base)
        tick_cpu(work, head, base, jobs)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
