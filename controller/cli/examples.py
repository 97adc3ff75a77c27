"""The Examples section of every command's --help, kubectl-style: a comment
line, then the command. tests/cli/test_help.py checks that every command has
one and that each example parses."""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "submit": [("every agent in controller.toml", "ftctl submit --all"),
               ("two agents (and the agents they depend on)", "ftctl submit qa legal"),
               ("one ad hoc job", "ftctl submit --agent triage --file data/triage.jsonl --model open-mistral-7b "
                                  "--provider sim --hp training_steps=10"),
               ("the same job again, on purpose", "ftctl submit qa --force")],
    "status": [("what runs, waits and finished last", "ftctl status"),
               ("plus provider job ids, tokens and the last change", "ftctl status -o wide"),
               ("the failed jobs' ids, ready for `ftctl retry`", "ftctl status --state failed -o name"),
               ("every job, as JSON", "ftctl status --all --json"),
               ("again every 5 seconds (in a pipe: a snapshot each time)", "ftctl status --watch --interval 5s")],
    "models": [("each agent's promoted model", "ftctl models"),
               ("as environment variables, for a deploy", "ftctl models -o env"),
               ("every succeeded job's model with its promotion", "ftctl models --all -o json")],
    "show": [("a job, its history and its attempts", "ftctl show 3"),
             ("the same, for scripts", "ftctl show 3 -o json"),
             ("the examples its model did worse on than the comparison", "ftctl show 3 --diff")],
    "cancel": [("cancel a job, at the provider too", "ftctl cancel 3")],
    "promote": [("make job 3's model its agent's, whatever its evaluation said", "ftctl promote 3")],
    "reject": [("withdraw job 3's model: it leaves the export", "ftctl reject 3")],
    "retry": [("a failed job back to prepared", "ftctl retry 7"),
              ("as `status -o name` prints it", "ftctl retry job/7")],
    "wait": [("block until jobs 3 and 4 are done, at most 2 hours", "ftctl wait 3 4 --timeout 2h"),
             ("look every 30 seconds", "ftctl wait 3 --interval 30s")],
    "events": [("the last 100 events", "ftctl events"),
               ("one job's, as they happen, as JSON lines", "ftctl events --job 3 --follow -o json")],
    "logs": [("a job's training log and loss curve", "ftctl logs 3"),
             ("as it trains, until it is done", "ftctl logs 3 --follow"),
             ("the points, for scripts", "ftctl logs 3 --json")],
    "dashboard": [("open the daemon's dashboard ([dashboard] listen) in a browser", "ftctl dashboard"),
                  ("serve it from the database alone, on a standby or a laptop", "ftctl dashboard --serve"),
                  ("on another address (a token is needed off loopback)",
                   "ftctl dashboard --serve --listen 127.0.0.1:9467")],
    "validate": [("a file, with the model's own tokenizer", "ftctl validate data/qa.jsonl --provider mistral "
                                                            "--model open-mistral-7b"),
                 ("a preference (DPO) file", "ftctl validate pairs.jsonl --provider together --method dpo"),
                 ("the report, for scripts", "ftctl validate data/qa.jsonl --json")],
    "estimate": [("what 3 epochs cost", "ftctl estimate data/qa.jsonl --provider mistral --model open-mistral-7b "
                                        "--epochs 3"),
                 ("without asking the provider for its quote", "ftctl estimate data/qa.jsonl --provider mistral "
                                                               "--model open-mistral-7b --no-quote")],
    "prepare": [("a cleaned copy with personal data scrubbed", "ftctl prepare raw.jsonl ready.jsonl --strip-extra "
                                                              "--scrub-pii"),
                ("a sample of 200 examples, the same each time", "ftctl prepare raw.jsonl sample.jsonl "
                                                                 "--max-examples 200 --seed 7"),
                ("5000 examples, 30% easy, 45% medium, 25% hard", "ftctl prepare raw.jsonl mix.jsonl --stratify "
                 "difficulty --target easy=0.30,medium=0.45,hard=0.25 --max-examples 5000")],
    "budget": [("spent, committed and left", "ftctl budget"),
               ("the same, for scripts", "ftctl budget --json")],
    "emulator": [("Mistral's API on port 8089", "ftctl emulator --kind mistral --port 8089"),
                 ("OpenAI's, 3 jobs at once, quick jobs, state kept",
                  "ftctl emulator --kind openai --limit 3 --train-time 5s --state-file openai.db")],
    "service-unit": [("install the unit", "ftctl --config /etc/ftctl/controller.toml service-unit | "
                                          "sudo tee /etc/systemd/system/ftctl.service"),
                     ("a longer watchdog for slow ticks", "ftctl service-unit --watchdog 5m")],
    "doctor": [("check everything, one line each", "ftctl doctor"),
               ("the same, for scripts", "ftctl doctor --json")],
    "tick": [("one reconcile pass (cron, debugging)", "ftctl tick")],
    "gc": [("what [retention] would delete, and the storage fee it saves a month", "ftctl gc --dry-run"),
           ("delete it now (the daemon does it on its own)", "ftctl gc")],
    "daemon": [("the reconcile loop (systemd runs this)", "ftctl daemon"),
               ("in CI: exit once every job is done", "ftctl daemon --until-done")],
    "demo": [("five agents on a simulated provider, in a temporary folder", "ftctl demo"),
             ("keep its files to look at them afterwards", "ftctl demo --dir /tmp/ftctl-demo"),
             ("ftctl's own trainer on a Ray head it starts and stops (no GPU, no network)",
              "ftctl demo --provider ray"),
             ("the same on a head you started (ray start --head)",
              "ftctl demo --provider ray --address http://127.0.0.1:8265")],
    "rehome": [("what would move to the Ray cluster, its cost and the end dates; changes nothing",
                "ftctl rehome --all --to gpu --plan"),
               ("re-home one agent, promoted only if at most 2 points worse on 20 recorded answers",
                "ftctl rehome support --to gpu --model Qwen/Qwen2.5-7B-Instruct --golden 20 --min-improvement -0.02"),
               ("full fine-tuning on the cluster instead of the mapped settings",
                "ftctl rehome support --to gpu --model Qwen/Qwen2.5-7B-Instruct --hp lora=false"),
               ("the same for every agent, for scripts", "ftctl rehome --all --to gpu --json")],
}


def examples_text(name: str) -> str:
    """The section as click prints it verbatim (its \\b marker keeps the lines)."""
    lines = ["\b", "Examples:"]
    for comment, command in EXAMPLES[name]:
        lines += [f"  # {comment}", f"  {command}"]
    return "\n".join(lines)


def add_examples(app: Any) -> None:
    """Every registered command gets its Examples section (KeyError: a
    command without examples; the test suite finds it first)."""
    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        info.epilog = examples_text(name)
