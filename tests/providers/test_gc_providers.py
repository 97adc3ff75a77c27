"""What [retention] asks of each provider kind: the descriptor's flags match
the client's methods, the Ray provider deletes only inside its artifacts
folder (and keeps the model's checkpoint), and a bad [retention] is one line."""

from pathlib import Path

import pytest

from tests.conftest import run_ftctl

from ftctl.controller.config import ConfigError, load_config
from ftctl.providers.base import PermanentError
from ftctl.providers.ray import RaySection
from ftctl.providers.ray.client import RayProvider
from ftctl.providers.registry import KINDS

CLIENTS = {"mistral": ("ftctl.providers.mistral", "MistralProvider"),
           "openai": ("ftctl.providers.openai", "OpenAIProvider"),
           "together": ("ftctl.providers.together", "TogetherProvider"),
           "simulated": ("ftctl.providers.simulated.provider", "SimulatedProvider"),
           "ray": ("ftctl.providers.ray.client", "RayProvider")}


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_each_descriptor_flag_has_its_client_method(kind):
    import importlib

    module, name = CLIENTS[kind]
    client = getattr(importlib.import_module(module), name)
    desc = KINDS[kind]
    for flag, method in (("deletes_models", "delete_model"), ("deletes_files", "delete_file"),
                         ("prunes_checkpoints", "prune_checkpoints")):
        assert getattr(desc, flag) == hasattr(client, method), (kind, flag)
    assert desc.deletes_files  # every provider deletes its files
    assert desc.deletes_models == (kind != "together")  # Together has no fine-tuned model delete


def _job(root: Path, agent: str, job_id: int, steps=(10, 20, 30)) -> str:
    folder = root / agent / f"job-{job_id}"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "adapter.safetensors").write_bytes(b"x")
    for step in steps:
        (folder / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    (root / "files").mkdir(exist_ok=True)
    (root / "files" / "abc.jsonl").write_text("{}\n")
    return str(folder / "model")


def test_ray_deletes_its_artifacts_and_nothing_outside(tmp_path):
    root = tmp_path / "artifacts"
    ray = RayProvider("ray", RaySection(kind="ray", artifacts=str(root)))
    kept, doomed = _job(root, "qa", 1), _job(root, "qa", 2)
    assert ray.prune_checkpoints(kept) == 3  # checkpoints = "best": the model folder is what stays
    assert (root / "qa/job-1/model/adapter.safetensors").exists()
    assert not list((root / "qa/job-1/checkpoints").iterdir())
    assert ray.delete_model(doomed) is True and not (root / "qa/job-2").exists()
    assert ray.delete_model(doomed) is False  # gone already: a retried intent
    assert (root / "qa/job-1/model").exists()
    assert ray.delete_file(str(root / "files/abc.jsonl")) is True
    outside = tmp_path / "elsewhere" / "job-3" / "model"
    outside.mkdir(parents=True)
    for bad in (str(outside), str(root / "qa/job-1"), str(root / "qa" / "notajob" / "model")):
        with pytest.raises(PermanentError):
            ray.delete_model(bad)
    with pytest.raises(PermanentError):
        ray.delete_file(str(tmp_path / "elsewhere"))
    assert outside.exists()


@pytest.mark.parametrize("text, key", [('rejected_after = "soon"', "retention.rejected_after"),
                                       ('checkpoints = "some"', "retention.checkpoints"),
                                       ("keep = 3", "retention.keep")])
def test_a_bad_retention_section_is_one_line_naming_its_key(make_config, text, key):
    path = make_config(extra=f"\n[retention]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    r = run_ftctl("gc", "--dry-run", config=path)
    assert r.returncode == 2 and key in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (path.parent / "ftctl.db").exists()  # nothing written
