"""Pipelines and the gate at the command line: bad config is one line, exit
2 and nothing stored; status, show, models, promote and reject."""

import json
import tomllib

from tests.conftest import VirtualClock, run_ftctl_many, write_config
from tests.engine.test_pipelines import EXPORT, GATES, run, site, ticker

from ftctl.controller.preflight.submit import plan_submissions, store_submissions

AGENT = '\n[agents.{n}]\nprovider = "sim"\nmodel = "{m}"\ntraining_file = "data/qa.jsonl"\n'


def one_line(p, needle, code=2):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftctl: error: ") and needle in lines[0], p.stderr


def test_bad_pipeline_config_is_one_line_exit_2_and_stores_nothing(tmp_path):
    cases = {
        "cycle": (AGENT.format(n="a", m="open-mistral-7b") + 'depends_on = ["b"]\n'
                  + AGENT.format(n="b", m="@a") + 'depends_on = ["a"]\n',
                  "agents.a.depends_on: a cycle: a -> b -> a"),
        "unknown": (AGENT.format(n="conv", m="@feedbak") + 'depends_on = ["feedbak"]\n',
                    "agents.conv.depends_on: unknown agent 'feedbak'"),
        "at-alone": (AGENT.format(n="conv", m="@qa"),
                     "agents.conv.model: '@qa' trains on qa's model, so depends_on must name it"),
        "eval-missing": ('\n[agents.qa.eval]\nfile = "data/held-out.jsonl"\n',
                         "agents.qa.eval.file: eval file"),
        "eval-malformed": ('\n[agents.qa.eval]\nfile = "data/bad-eval.jsonl"\n',
                           "bad-eval.jsonl line 2: the last message must be the assistant's expected answer"),
        "eval-key": ('\n[agents.qa.eval]\nfile = "data/qa.jsonl"\nthreshold = 0.08\n',
                     "agents.qa.eval.threshold: unknown key"),
    }
    configs = {}
    for name, (extra, _) in cases.items():
        configs[name] = write_config(tmp_path / name, agents=("qa",), extra=extra)
        (tmp_path / name / "data" / "bad-eval.jsonl").write_text(
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
            '{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}\n')
    results = run_ftctl_many(*[["--config", str(configs[n]), "submit", "--all"] for n in cases])
    for (name, (_, needle)), p in zip(cases.items(), results):
        one_line(p, needle)
        assert not (tmp_path / name / "ftctl.db").exists(), name


def test_status_show_models_promote_and_reject(tmp_path):
    clock = VirtualClock()
    cfg, store = site(tmp_path, clock, extra=GATES + EXPORT)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec, _ = ticker(cfg, store, clock)
    run(rec, clock, store)
    ids = {j.agent: j.id for j in store.list_jobs()}
    store.close()
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                    {"role": "assistant", "content": "a"}], "weight": w}) + "\n"
                           for q, w in (("x", 1), ("y", 3))))
    status, show, models, every, reject, after, promote_bad, promote_missing, split = run_ftctl_many(
        ["status", "--json"], ["show", str(ids["conversation"])], ["models", "--format", "json"],
        ["models", "--all", "--json"], ["reject", str(ids["conversation"])], ["models", "--format", "toml"],
        ["promote", str(ids["conversation"])], ["promote", "99"],
        ["prepare", str(raw), str(tmp_path / "split"), "--split-by", "weight"], config=cfg.path)
    promotions = {j["agent"]: j["promotion"] for j in json.loads(status.stdout)}
    assert promotions == {"qa": "rejected", "feedback": "promoted", "conversation": "promoted"}
    conversation = next(j for j in json.loads(status.stdout) if j["agent"] == "conversation")
    assert (conversation["model"], conversation["model_job_id"], conversation["upstream_job_ids"]) == (
        "@feedback", ids["feedback"], [ids["feedback"]])
    assert "evaluation" in show.stdout and "n=5 examples: candidate 1.00" in show.stdout
    assert "0.00; improvement +1.00 (needed +0.50)" in show.stdout
    assert sorted(r["agent"] for r in json.loads(models.stdout)) == ["conversation", "feedback"]
    assert {r["agent"]: r["promotion"] for r in json.loads(every.stdout)}["qa"] == "rejected"
    assert reject.returncode == 0 and "rejected" in reject.stdout
    assert sorted(tomllib.loads(after.stdout)["models"]) == ["feedback"]
    assert promote_bad.returncode == 0  # a person may promote a rejected model again
    # the export file followed each override
    assert sorted(tomllib.loads((cfg.resolve("agents/models.toml")).read_text())["models"]) == [
        "conversation", "feedback"]
    one_line(promote_missing, "no job 99")
    assert split.returncode == 0 and '{ file = "' in split.stdout and "weight = 3.0 }" in split.stdout


def test_the_demo_site_plans_a_two_stage_agent_and_two_gates(tmp_path):
    from ftctl.controller.config import load_config
    from ftctl.controller.demo import AGENTS, write_demo_files

    cfg = load_config(write_demo_files(tmp_path))
    plans = {p.agent: p for p in plan_submissions(cfg, [], all_agents=True)}
    assert sorted(plans) == sorted(AGENTS)
    assert (plans["conversation"].model, plans["conversation"].depends_on) == ("@feedback", ("feedback",))
    assert sorted(a for a, c in cfg.agents.items() if c.evaluation) == ["conversation", "legal"]
    assert cfg.export is not None
