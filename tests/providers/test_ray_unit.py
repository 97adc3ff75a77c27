"""The `ray` provider's parts that need no cluster: its prices in
GPU-hours, admission bounded by free resources (on a virtual clock), the
mapping of Ray's job records and errors, the trainer's data and protocol.
The SDK is real; where a call needs a cluster, a closed port stands in."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime

import pytest

from ftctl.controller.engine import decide as rc
from ftctl.controller.ledger.pricing import estimate, price_for
from ftctl.controller.ledger.reasons import render
from ftctl.providers.base import (FAIL_DATA, FAIL_TRAINING, NotFoundError, P_QUEUED, ProviderJob, TransientError,
                                  Unreachable)
from ftctl.providers.ray import RaySection, model_size
from ftctl.providers.ray.client import RayProvider
from ftctl.providers.ray.local import free_port
from ftctl.providers.trainer import protocol
from ftctl.providers.trainer.data import BadData, load, read_rows, weighted

NOW = datetime(2026, 12, 3, 12, 0, 0)


def section(**kw) -> RaySection:
    return RaySection(kind="ray", artifacts=kw.pop("artifacts", "/srv/ftctl/artifacts"), **kw)


def test_the_estimate_is_tokens_over_throughput_times_the_gpu_hour_price():
    gpu = section(gpu_hour_price=2.5)
    price = price_for("ray", "Qwen/Qwen2.5-7B-Instruct", section=gpu)
    # 7B LoRA: 2,900 tokens a second (the Qwen table) -> a million tokens in 344.8 s, at $2.50 an hour
    assert math.isclose(price.train_per_m, 1e6 / 2900 / 3600 * 2.5, rel_tol=1e-9)
    assert "Qwen" in price.source and "$2.5 an hour" in price.source
    est = estimate(price, 2_000_000, 1000, epochs=3)
    assert est.trained_tokens == 6_000_000 and math.isclose(est.cost, round(6 * price.train_per_m, 4))
    # twice the size: half the throughput; full fine-tuning: the table's own row; the user's figure wins
    assert price_for("ray", "Qwen/Qwen2.5-14B", section=gpu).train_per_m > price.train_per_m
    full = price_for("ray", "Qwen/Qwen2.5-7B-Instruct", section=gpu, hyperparameters={"lora": False})
    assert math.isclose(full.train_per_m, 1e6 / 910 / 3600 * 2.5, rel_tol=1e-9)
    own = price_for("ray", "anything", section=section(gpu_hour_price=3.6, tokens_per_gpu_second=1000.0))
    assert math.isclose(own.train_per_m, 1.0) and "tokens_per_gpu_second = 1000" in own.source
    # two GPUs a job: twice the throughput at twice the hourly cost, the same per token
    two = price_for("ray", "anything", section=section(gpu_hour_price=3.6, tokens_per_gpu_second=1000.0,
                                                         gpus_per_job=2))
    assert math.isclose(two.train_per_m, 1.0)


def test_training_steps_are_priced_by_the_trainers_examples_a_step():
    price = price_for("ray", "x-7B", section=section(gpu_hour_price=2.5), hyperparameters={"batch_size": 8})
    est = estimate(price, 10_000, 100, training_steps=50)  # 100 tokens an example, 8 a step
    assert est.trained_tokens == 50 * 8 * 100


def test_model_size_from_a_config_or_the_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2,
                                                      "intermediate_size": 128, "vocab_size": 512}))
    assert 0 < model_size(str(tmp_path)) < 0.001
    assert model_size("Qwen/Qwen2.5-0.5B-Instruct") == 0.5 and model_size("meta-llama/Llama-3.1-70b") == 70.0
    assert model_size("gpt2") is None


def view(**kw) -> rc.ProviderView:
    return rc.ProviderView(name="gpu", configured_limit=kw.pop("limit", 4), jobs=(), listed_at=NOW, **kw)


def prepared(n: int) -> list[rc.JobView]:
    return [rc.JobView(id=i, agent=f"a{i}", provider="gpu", state="prepared", created_at=NOW) for i in range(1, n + 1)]


def test_admission_is_bounded_by_the_clusters_free_resources():
    out = rc.decide(prepared(3), {"gpu": view(room=1, room_need="1 GPU")}, NOW, rc.Policy(), random.Random(0))
    submits = [d for d in out if isinstance(d, rc.Submit)]
    notes = [d for d in out if isinstance(d, rc.Note)]
    assert [d.job_id for d in submits] == [1]
    assert {render(n.updates["reason_code"], n.updates["reason_args"]) for n in notes} == \
        {"waiting for 1 GPU on the gpu cluster (none free now)"}
    # room for all: the concurrency bounds it as for any provider
    out = rc.decide(prepared(3), {"gpu": view(room=5, limit=2)}, NOW, rc.Policy(), random.Random(0))
    assert len([d for d in out if isinstance(d, rc.Submit)]) == 2


def test_a_cluster_with_no_node_big_enough_says_so_and_admits_nothing():
    short = "a job needs 1 GPU and the largest node of the Ray cluster at http://h:8265 has 0"
    out = rc.decide(prepared(2), {"gpu": view(room=3, room_need="1 GPU", room_short=short)}, NOW, rc.Policy(),
                    random.Random(0))
    assert not [d for d in out if isinstance(d, rc.Submit)]
    texts = {render(d.updates["reason_code"], d.updates["reason_args"]) for d in out if isinstance(d, rc.Note)}
    assert texts == {f"cannot run on gpu: {short}"}


def test_a_pending_ray_job_says_what_it_waits_for():
    job = rc.JobView(id=1, agent="qa", provider="gpu", state="queued", client_token="qa-1", provider_job_id="qa-1",
                     created_at=NOW)
    pj = ProviderJob("qa-1", P_QUEUED, "PENDING", "qa-1", message="waiting for 1 GPU on the Ray cluster",
                     created_at=NOW)
    pv = rc.ProviderView(name="gpu", configured_limit=2, jobs=(pj,), listed_at=NOW)
    (note,) = [d for d in rc.decide([job], {"gpu": pv}, NOW, rc.Policy(), random.Random(0)) if isinstance(d, rc.Note)]
    assert render(note.updates["reason_code"], note.updates["reason_args"]) == \
        "waiting for 1 GPU on the Ray cluster (PENDING)"


def details(status: str, **kw):
    from ray.job_submission import JobDetails, JobType

    meta = {"ftctl_token": "qa-1", "ftctl_job_id": "7", "ftctl_agent": "qa", "ftctl_kind": "train"}
    return JobDetails(type=JobType.SUBMISSION, submission_id="qa-1", status=status, entrypoint="python -m x",
                      metadata=meta, start_time=1_700_000_000_000, **kw)


def test_ray_job_records_map_to_ftctl_states_models_costs_and_failures():
    p = RayProvider("gpu", section(gpu_hour_price=2.0))
    pending = p._to_job(details("PENDING"), detailed=True)
    assert (pending.status, pending.message) == ("queued", "waiting for 1 GPU on the Ray cluster")
    done = p._to_job(details("SUCCEEDED", end_time=1_700_000_000_000 + 1_800_000), detailed=True)
    assert done.status == "succeeded" and done.fine_tuned_model == "/srv/ftctl/artifacts/qa/job-7/model"
    assert done.cost == 1.0  # half an hour at $2.00
    assert p._to_job(details("STOPPED", end_time=1_700_000_000_001), detailed=True).status == "cancelled"
    # a listing says only that it failed; the details come from the trainer's own exit code and last line
    assert not p._to_job(details("FAILED", driver_exit_code=65), detailed=False).detailed
    p._logs["qa-1"] = 'noise\nftctl-log {"kind": "error", "code": 65, "message": "f.jsonl line 3: invalid JSON"}\n'
    bad = p._to_job(details("FAILED", driver_exit_code=65), detailed=True)
    assert (bad.failure, bad.message) == (FAIL_DATA, "f.jsonl line 3: invalid JSON")
    p._logs["qa-1"] = ""
    died = p._to_job(details("FAILED", driver_exit_code=None, message="Job supervisor actor died"), detailed=True)
    assert died.failure == FAIL_TRAINING and "actor died" in died.message
    preempted = p._to_job(details("FAILED", driver_exit_code=75, message="x"), detailed=True)
    assert preempted.failure == FAIL_TRAINING and "preempted" in preempted.message


def test_ray_errors_are_classified_for_the_failure_policy():
    p = RayProvider("gpu", section(address=f"http://127.0.0.1:{free_port()}", timeout="2s"))
    with pytest.raises(Unreachable, match="cannot reach Ray at http://127.0.0.1"):
        p.list_jobs()

    def refuse(code: int, text: str):
        raise RuntimeError(f"Request failed with status code {code}: {text}.")

    with pytest.raises(NotFoundError):
        p._call(refuse, 404, "Job qa-1 does not exist")
    with pytest.raises(TransientError, match="already exists"):
        p._call(refuse, 500, "Job with submission_id qa-1 already exists. Please use a different submission_id")


def test_the_trainers_data_honours_weights_and_refuses_what_is_not_json(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(10)))
    rows = read_rows(path, "sft")
    assert rows[0] == {"prompt": [{"role": "user", "content": "q0"}], "completion": [{"role": "assistant",
                                                                                        "content": "a0"}]}
    assert len(weighted(rows, 2.0, 0)) == 20 and len(weighted(rows, 0.5, 0)) == 15 - 10
    assert len(weighted(rows, 1.5, 0)) == 15 and weighted(rows, 1.5, 0) == weighted(rows, 1.5, 0)
    assert len(load([(path, 1.0), (path, 0.3)], "sft")) == 13
    (tmp_path / "nan.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}], "w": NaN}\n')
    with pytest.raises(BadData, match="nan.jsonl line 1: invalid JSON"):
        read_rows(tmp_path / "nan.jsonl", "sft")
    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text(json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                               "preferred_output": [{"role": "assistant", "content": "good"}],
                               "non_preferred_output": [{"role": "assistant", "content": "bad"}]}) + "\n")
    assert read_rows(dpo, "dpo")[0]["chosen"] == [{"role": "assistant", "content": "good"}]


def test_the_protocol_reads_only_the_trainers_lines():
    text = 'INFO something\nftctl-log {"kind": "metric", "step": 1, "loss": 2.0}\nftctl-log {broken\n' \
           'x ftctl-log {"kind": "done", "steps": 1}\nftctl-log [1]\n'
    assert [ln["kind"] for ln in protocol.parse(text)] == ["metric", "done"]
    spec = protocol.TrainSpec(job_id=1, agent="qa", token="qa-1", base_model="b", files=[("f", 0.5)], output="o")
    assert protocol.TrainSpec.from_json(spec.to_json()) == spec
    assert protocol.model_dir("s3://bucket/art/", "qa", 3) == "s3://bucket/art/qa/job-3/model"


def test_a_ray_section_checks_its_address_and_resolves_its_artifacts(tmp_path):
    from ftctl.controller.config import ConfigError, load_config

    config = tmp_path / "controller.toml"
    config.write_text('[providers.gpu]\nkind = "ray"\naddress = "127.0.0.1:8265"\nartifacts = "art"\n')
    with pytest.raises(ConfigError, match="address") as err:
        load_config(config)
    assert "\n" not in str(err.value)
    config.write_text('[providers.gpu]\nkind = "ray"\nartifacts = "art"\n')
    assert load_config(config).providers["gpu"].artifacts == str(tmp_path / "art")
