"""Preflight for pipelines and cross-agent data: fine-tuned bases priced and
counted as their root, weighted training files, the eval file checked at
submit, and prepare's duplicates, --keep-duplicates and --split-by weight."""

import json
import tomllib

import pytest

from tests.conftest import write_config, write_training_file

from ftctl.controller.config import load_config
from ftctl.controller.ledger.pricing import price_for
from ftctl.controller.preflight.prepare import prepare
from ftctl.controller.preflight.submit import SubmitError, plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers.registry import kind


@pytest.mark.parametrize("kind_name,model,root,price", [
    ("mistral", "ft:open-mistral-7b:587a6b29:20240514:7e773925", "open-mistral-7b", 1.0),
    ("simulated", "ft:open-mistral-7b:feedback-1a2b3c4d:20260105:aaaa1111", "open-mistral-7b", 1.0),
    ("openai", "ft:gpt-4o-mini-2024-07-18:my-org:custom-suffix:9abel2ID", "gpt-4o-mini", 3.0),
])
def test_a_fine_tuned_base_is_priced_and_counted_as_its_root(kind_name, model, root, price):
    assert price_for(kind_name, model).model == root and price_for(kind_name, model).train_per_m == price
    convo = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]
    assert kind(kind_name).counter(model).count(convo) > 0


def line(q, a="ok", **extra):
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra})


def test_prepare_judges_duplicates_on_messages_and_target_agent(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join([
        line("hi", target_agent="qa"), line("hi", target_agent="legal"),  # one conversation, two agents: kept
        line("hi", target_agent="qa"),                                     # the same for the same agent
        line("bye"), line("bye"),                                          # plain duplicates
    ]) + "\n")
    result = prepare(raw, tmp_path / "out.jsonl", provider="mistral", strip_extra=True)
    assert (result.kept, dict(result.removed)) == (3, {"duplicate": 1, "duplicate_for_target": 1})
    kept = prepare(raw, tmp_path / "all.jsonl", provider="mistral", keep_duplicates=True)
    assert kept.kept == 5 and not kept.removed


def test_prepare_splits_by_weight_into_files_and_their_training_files(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("\n".join([line("a", weight=2), line("b", weight=2.0), line("c"), line("d", weight=0.5),
                              line("e", weight="heavy"), line("f", weight=0)]) + "\n")
    out = tmp_path / "split"
    result = prepare(raw, out, provider="mistral", split_by="weight")
    assert result.removed == {"invalid_weight": 2}
    assert {w: sum(1 for _ in open(p)) for w, p in result.files.items()} == {2.0: 2, 1.0: 1, 0.5: 1}
    for path in result.files.values():
        assert all("weight" not in json.loads(x) for x in open(path))
    snippet = tomllib.loads(result.training_files_snippet())["training_files"]
    assert snippet == [{"file": str(out / "weight-0.5.jsonl"), "weight": 0.5},
                       {"file": str(out / "weight-1.jsonl"), "weight": 1.0},
                       {"file": str(out / "weight-2.jsonl"), "weight": 2.0}]


WEIGHTED = """
[agents.mixed]
provider = "sim"
model = "open-mistral-7b"
training_files = [{ file = "data/w1.jsonl", weight = 1.0 }, { file = "data/w2.jsonl", weight = 2.0 }]
hyperparameters = { epochs = 1 }
"""


def test_weighted_training_files_are_stored_with_their_weights(tmp_path):
    cfg_path = write_config(tmp_path / "site", agents=(), extra=WEIGHTED)
    write_training_file(cfg_path.parent / "data" / "w1.jsonl", 3)
    write_training_file(cfg_path.parent / "data" / "w2.jsonl", 4)
    cfg = load_config(cfg_path)
    (plan,) = plan_submissions(cfg, ["mixed"])
    assert plan.examples == 7 and [w for _, w, _ in plan.training_files] == [1.0, 2.0]
    store = Store(cfg.database_url)
    (result,) = store_submissions(store, [plan])
    job = store.get_job(result.job_id)
    assert [(f["file"].endswith(n), f["weight"]) for f, n in zip(job.training_files, ("w1.jsonl", "w2.jsonl"))] == [
        (True, 1.0), (True, 2.0)]
    # another weight is another job
    assert job.content_hash not in {f["hash"] for f in job.training_files}
    store.close()


def test_a_provider_without_file_weights_refuses_them_at_submit(tmp_path):
    from tests.conftest import write_remote_config

    cfg_path = write_remote_config(tmp_path / "site", "openai", "http://127.0.0.1:9", agents=(),
                                   extra=WEIGHTED.replace('"sim"', '"openai"').replace("open-mistral-7b",
                                                                                        "gpt-4o-mini-2024-07-18"))
    for n in ("w1", "w2"):
        write_training_file(cfg_path.parent / "data" / f"{n}.jsonl")
    with pytest.raises(SubmitError, match=r"^agents\.mixed\.training_files: provider 'openai' \(openai\) takes one "
                                          r"training file without a weight"):
        plan_submissions(load_config(cfg_path), ["mixed"])


def test_the_eval_file_is_checked_at_submit_naming_its_line(tmp_path):
    cfg_path = write_config(tmp_path / "site", agents=("qa",),
                            extra='\n[agents.qa.eval]\nfile = "data/eval.jsonl"\n')
    cfg = load_config(cfg_path)
    with pytest.raises(SubmitError, match=r"agents\.qa\.eval\.file: eval file .*eval\.jsonl does not exist"):
        plan_submissions(cfg, ["qa"])
    (cfg_path.parent / "data" / "eval.jsonl").write_text(line("q1", "a1") + "\n" + line("q2") + "\n{oops\n")
    with pytest.raises(SubmitError, match=r"eval\.jsonl line 3: invalid JSON"):
        plan_submissions(cfg, ["qa"])
    (cfg_path.parent / "data" / "eval.jsonl").write_text(json.dumps({"messages": [{"role": "user",
                                                                                   "content": "q"}]}) + "\n")
    with pytest.raises(SubmitError, match=r"line 1: no conversation"):
        plan_submissions(cfg, ["qa"])
