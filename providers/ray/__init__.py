"""Self-hosted fine-tuning on Ray: ftctl's own TRL/PEFT trainer
(`providers.trainer`) run as Ray Jobs through the official
`JobSubmissionClient` (pip install '.[ray]'; the cluster's workers need
'.[train]').

The client token is the job's submission id, so Ray itself refuses a second
job under it. Models land in `artifacts` (a path every worker and the
controller see, or an fsspec URI): the fine-tuned model's id is its folder.
Cost is GPU-hours: the estimate divides trained tokens by a throughput, the
spend is the measured runtime times `gpu_hour_price`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from ftctl.providers.kind import BuildEnv, ProviderKind, ProviderSection
from ftctl.providers.settings import bounded_duration

# our hyperparameter names are the trainer's own (providers.trainer.train.DEFAULTS)
HYPERPARAMETERS = {k: k for k in (
    "epochs", "training_steps", "learning_rate", "batch_size", "gradient_accumulation", "lora", "lora_r",
    "lora_alpha", "lora_dropout", "warmup_steps", "checkpoint_steps", "max_seq_length", "seed", "dpo_beta",
    "trainer", "training_method")}
# the trainer's defaults the estimate needs (kept equal to train.DEFAULTS, which imports torch lazily)
DEFAULT_BATCH = 4

# Training throughput, tokens a second per GPU, by model size (billions of
# parameters), LoRA and full fine-tuning. Source: the Qwen team's "Profiling
# of Memory and Speed" table (github.com/QwenLM/Qwen, README, A100-SXM4-80G,
# batch 1 x 8 accumulation, sequence 1024): 7B LoRA 2.8 s/it (2,900 tokens/s),
# 14B LoRA 4.4 s/it (1,860), 7B full on 2 GPUs 4.5 s/it (910 a GPU). Other
# sizes scale inversely with the size from the nearest row. Set
# `tokens_per_gpu_second` for your own hardware: these are a starting point.
THROUGHPUT_SOURCE = "Qwen 'Profiling of Memory and Speed' (A100-80G), scaled by model size"
THROUGHPUT = {"lora": ((7.0, 2900.0), (14.0, 1860.0)), "full": ((7.0, 910.0),)}
CPU_TOKENS_PER_SECOND = 2000.0  # a tiny model on one CPU core (the demo's), measured by benchmarks/ray.py


class RaySection(ProviderSection):
    kind: Literal["ray"]
    address: str = "http://127.0.0.1:8265"
    timeout: bounded_duration(600.0) = Field(default=10.0, gt=0)  # type: ignore[valid-type]
    # where models land: a path every Ray worker (and this controller) sees, or an fsspec URI
    artifacts: str
    gpus_per_job: float = Field(default=1.0, ge=0)
    cpus_per_job: float = Field(default=1.0, gt=0)
    gpu_hour_price: float = Field(default=0.0, ge=0)
    cpu_hour_price: float = Field(default=0.0, ge=0)
    tokens_per_gpu_second: float | None = Field(default=None, gt=0)
    runtime_env: dict[str, Any] | None = None
    # the Python of the workers' environment that has ftctl[train] installed
    python: str = "python"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"address: {value!r} is not the http:// address of a Ray dashboard")
        return value.rstrip("/")

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: str, info: ValidationInfo) -> str:
        if "://" in value:
            return value.rstrip("/")
        path = Path(value).expanduser()
        base = (info.context or {}).get("base_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return str(path)

    @property
    def need(self) -> str:
        """What one job waits for, in words."""
        if self.gpus_per_job:
            n = f"{self.gpus_per_job:g}"
            return f"{n} GPU{'' if self.gpus_per_job == 1 else 's'}"
        return f"{self.cpus_per_job:g} CPU{'' if self.cpus_per_job == 1 else 's'}"

    @property
    def hour_price(self) -> float:
        """What an hour of one job costs."""
        if self.gpus_per_job:
            return self.gpu_hour_price * self.gpus_per_job
        return self.cpu_hour_price * self.cpus_per_job


def model_size(model: str) -> float | None:
    """Billions of parameters: from a local config.json, else from the name (7B, 0.5b)."""
    config = Path(model) / "config.json"
    try:
        c = json.loads(config.read_text())
        hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
        inter = int(c.get("intermediate_size") or 4 * hidden)
        return (layers * (4 * hidden * hidden + 3 * hidden * inter) + int(c.get("vocab_size", 0)) * hidden) / 1e9
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", model)
    return float(found.group(1)) if found else None


def throughput(section: RaySection | None, model: str, lora: bool) -> tuple[float, str]:
    """(tokens a second for one job, where the figure comes from)."""
    if section is not None and section.tokens_per_gpu_second:
        gpus = max(1.0, section.gpus_per_job)
        return section.tokens_per_gpu_second * gpus, f"tokens_per_gpu_second = {section.tokens_per_gpu_second:g}"
    if section is not None and not section.gpus_per_job:
        return CPU_TOKENS_PER_SECOND, "CPU jobs: about 2,000 tokens a second (a tiny model)"
    size = model_size(model) or 7.0
    rows = THROUGHPUT["lora" if lora else "full"]
    ref_size, ref_tps = min(rows, key=lambda r: abs(r[0] - size))
    tps = min(50_000.0, ref_tps * ref_size / max(size, 0.05))
    gpus = max(1.0, section.gpus_per_job) if section is not None else 1.0
    return tps * gpus, f"{THROUGHPUT_SOURCE}: {tps:,.0f} tokens/s a GPU for {size:.2g}B"


class RayKind(ProviderKind):
    kind = "ray"
    section = RaySection
    hyperparameters = HYPERPARAMETERS
    price_key = "ray"
    roles = frozenset({"system", "user", "assistant"})
    example_keys = frozenset({"messages"})
    file_weights = True
    chat = False
    chat_batches = True
    training_log = True
    chaining = True
    resources = True
    deletes_models = True  # the job's folder in the artifacts folder
    deletes_files = True
    prunes_checkpoints = True
    methods = ("sft", "dpo")
    method_key = "training_method"
    sdk = "ray"
    install_hint = "pip install '.[ray]' from a checkout"

    def client(self, name: str, section: RaySection, env: BuildEnv):
        from ftctl.providers.ray.client import RayProvider

        return RayProvider(name, section)

    def price_entry(self, section: Any, model: str, hyperparameters: dict[str, Any] | None) -> dict[str, Any]:
        """A price-table entry made from the section: GPU-hours per million tokens."""
        hp = hyperparameters or {}
        lora = hp.get("lora", True) is not False
        tps, source = throughput(section, model, lora)
        hour = section.hour_price if section is not None else 0.0
        per_m = 1e6 / tps / 3600.0 * hour
        batch = int(hp.get("batch_size") or DEFAULT_BATCH) * int(hp.get("gradient_accumulation") or 1)
        return {"train_per_m": per_m, "examples_per_step": batch, "chat_per_m": per_m,
                "source": f"${hour:g} an hour at {tps:,.0f} tokens/s ({source})"}

    def base_model(self, model: str) -> str:
        from ftctl.providers.trainer.loading import root_of

        return root_of(model)

    def default_epochs(self, examples: int) -> tuple[float, str]:
        return 1.0, "epochs not given: the trainer's default, 1"

    def counter(self, model: str):
        from ftctl.providers.tokenizers import approximate_counter, local_counter

        root = self.base_model(model)
        return local_counter(self.kind, root) or approximate_counter(self.kind, root)


KIND = RayKind()
