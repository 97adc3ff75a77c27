"""ftctl's trainer run as a plain process (no cluster): preference pairs
train with TRL's DPOTrainer on the tiny model built from a config."""

from __future__ import annotations

import json
import os

import pytest

from ftctl.providers.trainer.protocol import parse as protocol_lines
from tests.providers.ray_support import tiny_base  # noqa: F401

pytestmark = pytest.mark.slow


def test_preference_pairs_train_with_dpo_and_the_manifest_says_so(tmp_path, tiny_base):
    import subprocess
    import sys

    data = tmp_path / "dpo.jsonl"
    data.write_text("".join(json.dumps({"input": {"messages": [{"role": "user", "content": q}]},
                                        "preferred_output": [{"role": "assistant", "content": a}],
                                        "non_preferred_output": [{"role": "assistant", "content": "no idea"}]}) + "\n"
                            for q, a in (("What colour is the sky?", "blue"), ("Name the largest planet.", "Jupiter"))))
    spec = {"job_id": 9, "agent": "pref", "token": "pref-1", "base_model": str(tiny_base), "files": [[str(data), 1.0]],
            "output": str(tmp_path / "out"), "method": "dpo",
            "hyperparameters": {"training_steps": 3, "batch_size": 2, "checkpoint_steps": 2}}
    p = subprocess.run([sys.executable, "-m", "ftctl.providers.trainer", "train", json.dumps(spec)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "FTCTL_TRAIN_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    lines = protocol_lines(p.stdout)
    assert [ln["step"] for ln in lines if ln["kind"] == "metric"] == [1, 2, 3]
    manifest = json.loads((tmp_path / "out" / "model" / "manifest.json").read_text())
    assert manifest["method"] == "dpo" and manifest["adapter"] is True and manifest["steps"] == 3
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").exists()

