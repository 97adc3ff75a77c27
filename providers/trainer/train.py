"""One training run: TRL's SFTTrainer (or DPOTrainer for preference pairs)
with a PEFT LoRA adapter, or full fine-tuning with `lora = false`.

Checkpoints every `checkpoint_steps`; each complete one gets a marker file
holding the run's key, so a retried job resumes from its newest complete
checkpoint of the same run (its step count goes on) and a checkpoint half
written by a killed trainer is never resumed from. SIGTERM (Ray's stop, a
preemption) saves a checkpoint and exits 75: the retry resumes there. The
model (adapter or full weights) and the tokenizer are written, then the
manifest, atomically and last: a manifest always sits beside a whole model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftctl.providers.trainer import storage
from ftctl.providers.trainer.data import BadData, load
from ftctl.providers.trainer.loading import UnknownModel, load_model, load_tokenizer, root_of
from ftctl.providers.trainer.protocol import (COMPLETE_MARKER, EXIT_DATA, EXIT_MODEL, EXIT_OOM, EXIT_PREEMPTED,
                                              EXIT_USAGE, MANIFEST, TrainSpec, emit)

DEFAULTS: dict[str, Any] = {
    "epochs": 1, "training_steps": None, "learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation": 1,
    "lora": True, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "warmup_steps": 0, "checkpoint_steps": 50,
    "max_seq_length": 1024, "seed": 0, "dpo_beta": 0.1, "trainer": "auto",
}
TRAINERS = ("auto", "trl", "unsloth")


class Usage(Exception):
    pass


def settings(spec: TrainSpec) -> dict[str, Any]:
    hp = {**DEFAULTS, **{k: v for k, v in spec.hyperparameters.items() if v is not None}}
    unknown = sorted(set(spec.hyperparameters) - set(DEFAULTS) - {"training_method"})
    if unknown:
        raise Usage(f"hyperparameters not known to the trainer: {', '.join(unknown)}")
    if hp["trainer"] not in TRAINERS:
        raise Usage(f"trainer {hp['trainer']!r} is not one of {', '.join(TRAINERS)}")
    for key in ("batch_size", "gradient_accumulation", "lora_r", "checkpoint_steps", "max_seq_length", "seed",
                "warmup_steps"):
        if not isinstance(hp[key], (int, float)) or isinstance(hp[key], bool) or int(hp[key]) != hp[key]:
            raise Usage(f"hyperparameter {key} must be a whole number, not {hp[key]!r}")
        hp[key] = int(hp[key])
    return hp


def run_key(spec: TrainSpec) -> str:
    """What a checkpoint must have been made by to be resumed from."""
    same = {"base": spec.base_model, "files": spec.files, "method": spec.method, "hp": spec.hyperparameters,
            "data": spec.data_hash}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


def newest_checkpoint(folder: Path, key: str) -> Path | None:
    found = []
    for path in folder.glob("checkpoint-*"):
        marker = path / COMPLETE_MARKER
        try:
            if marker.read_text().strip() == key:
                found.append((int(path.name.split("-", 1)[1]), path))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None


def _callbacks(key: str, metrics_file: Path, stop: dict[str, bool], remote: str | None) -> list[Any]:
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if "loss" not in values:
                return
            point = {"step": state.global_step, "loss": values["loss"], "learning_rate": values.get("learning_rate"),
                     "epoch": values.get("epoch", state.epoch)}
            emit("metric", **point)
            with metrics_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(point) + "\n")

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (path / COMPLETE_MARKER).write_text(key)
            if remote:
                storage.put_tree(path, f"{remote}/checkpoints/{path.name}")
            emit("checkpoint", step=state.global_step, path=path.name)

        def on_step_end(self, args, state, control, **kwargs):
            if stop["now"]:
                control.should_save = True
                control.should_training_stop = True
            return control

    return [Report()]


def _trainer(spec: TrainSpec, hp: dict[str, Any], rows: list[dict[str, Any]], out: Path, callbacks: list[Any]) -> Any:
    import torch
    from datasets import Dataset

    gpu = torch.cuda.is_available()
    unsloth = hp["trainer"] in ("auto", "unsloth") and gpu and importlib.util.find_spec("unsloth") is not None
    if hp["trainer"] == "unsloth" and not unsloth:
        raise Usage("trainer \"unsloth\" needs Unsloth installed and a GPU")
    if unsloth:  # pragma: no cover - needs a GPU and Unsloth
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(spec.base_model, max_seq_length=hp["max_seq_length"])
        if hp["lora"]:
            model = FastLanguageModel.get_peft_model(model, r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                                                     lora_dropout=hp["lora_dropout"])
        peft = None
    else:
        tok = load_tokenizer(spec.base_model)
        model = load_model(spec.base_model)
        peft = None
        if hp["lora"]:
            from peft import LoraConfig

            peft = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                              target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(output_dir=str(out), per_device_train_batch_size=hp["batch_size"],
                  gradient_accumulation_steps=hp["gradient_accumulation"], learning_rate=float(hp["learning_rate"]),
                  num_train_epochs=float(hp["epochs"]), max_steps=int(hp["training_steps"] or -1),
                  warmup_steps=hp["warmup_steps"], logging_steps=1, save_strategy="steps",
                  save_steps=hp["checkpoint_steps"], report_to=[], seed=hp["seed"], use_cpu=not gpu,
                  bf16=gpu and torch.cuda.is_bf16_supported(), disable_tqdm=True, max_length=hp["max_seq_length"],
                  dataloader_num_workers=0)
    data = Dataset.from_list(rows)
    if spec.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(model=model, args=DPOConfig(beta=float(hp["dpo_beta"]), **common), train_dataset=data,
                          processing_class=tok, peft_config=peft, callbacks=callbacks), tok
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(model=model, args=SFTConfig(completion_only_loss=True, **common), train_dataset=data,
                      processing_class=tok, peft_config=peft, callbacks=callbacks), tok


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _write_model(trainer: Any, tok: Any, spec: TrainSpec, hp: dict[str, Any], staging: Path, steps: int,
                 final_loss: float | None, started: float) -> None:
    model_out = staging / "model"
    if model_out.exists():
        shutil.rmtree(model_out)  # a model half written by an earlier, killed attempt
    trainer.model.save_pretrained(str(model_out))
    tok.save_pretrained(str(model_out))
    manifest = {"job_id": spec.job_id, "agent": spec.agent, "token": spec.token, "base_model": spec.base_model,
                "root_model": root_of(spec.base_model), "adapter": bool(hp["lora"]), "method": spec.method,
                "data_hash": spec.data_hash, "files": spec.files, "hyperparameters": spec.hyperparameters,
                "steps": steps, "final_loss": final_loss, "seconds": round(time.time() - started, 3),
                "versions": _versions()}
    final = f"{spec.output}/model"
    if storage.is_remote(spec.output):
        storage.put_tree(model_out, final)
    storage.write_bytes(f"{final}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True).encode())


def train(spec: TrainSpec) -> int:
    started = time.time()
    try:
        hp = settings(spec)
        workdir = Path(tempfile.mkdtemp(prefix="ftctl-train-"))
        files = [(storage.fetch(uri, workdir), weight) for uri, weight in spec.files]
        rows = load(files, spec.method, seed=hp["seed"])
    except Usage as exc:
        emit("error", code=EXIT_USAGE, message=str(exc))
        return EXIT_USAGE
    except BadData as exc:
        emit("error", code=EXIT_DATA, message=str(exc))
        return EXIT_DATA
    remote = spec.output if storage.is_remote(spec.output) else None
    staging = workdir / "out" if remote else storage.local(spec.output)
    checkpoints = staging / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    key = run_key(spec)
    if remote:  # a retry on another node: the checkpoints come back from the store first
        try:
            storage.fetch(f"{remote}/checkpoints", staging)
        except (FileNotFoundError, OSError):
            pass
    stop = {"now": False}

    def on_term(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("FTCTL_TRAIN_THREADS", "0")) or torch.get_num_threads()))
    try:
        trainer, tok = _trainer(spec, hp, rows, checkpoints, _callbacks(key, staging / "metrics.jsonl", stop, remote))
        resume = newest_checkpoint(checkpoints, key)
        emit("event", step=int(resume.name.split("-", 1)[1]) if resume else 0,
             message=f"resumed from {resume.name}" if resume else
             f"started: {len(rows)} examples, method {spec.method}, {'LoRA' if hp['lora'] else 'full fine-tuning'}")
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except Usage as exc:
        emit("error", code=EXIT_USAGE, message=str(exc))
        return EXIT_USAGE
    except UnknownModel as exc:
        emit("error", code=EXIT_MODEL, message=str(exc))
        return EXIT_MODEL
    except torch.OutOfMemoryError as exc:
        emit("error", code=EXIT_OOM, message=f"out of memory: {str(exc).splitlines()[0][:200]}")
        return EXIT_OOM
    steps = int(trainer.state.global_step)
    if stop["now"]:
        emit("event", step=steps, message=f"stopped by SIGTERM at step {steps}; a retry resumes from its checkpoint")
        return EXIT_PREEMPTED
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    final_loss = float(losses[-1]) if losses else getattr(result, "training_loss", None)
    _write_model(trainer, tok, spec, hp, staging, steps, final_loss, started)
    emit("event", step=steps, message=f"done: {steps} steps, final loss {final_loss:.4f}" if final_loss is not None
         else f"done: {steps} steps")
    emit("done", steps=steps, final_loss=final_loss)
    return 0
