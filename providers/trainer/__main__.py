"""python -m ftctl.providers.trainer train SPEC | answer SPEC | tiny OUT FILE..."""

from __future__ import annotations

import sys
from pathlib import Path

from ftctl.providers.trainer.protocol import EXIT_USAGE, AnswerSpec, TrainSpec, emit


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("train", "answer", "tiny"):
        sys.stderr.write("usage: python -m ftctl.providers.trainer train SPEC | answer SPEC | tiny OUT FILE...\n")
        return EXIT_USAGE
    if argv[0] == "tiny":
        from ftctl.providers.trainer.tiny import build

        print(build(Path(argv[1]), [Path(p) for p in argv[2:]]))
        return 0
    text = Path(argv[1][1:]).read_text() if argv[1].startswith("@") else argv[1]
    try:
        spec = TrainSpec.from_json(text) if argv[0] == "train" else AnswerSpec.from_json(text)
    except (ValueError, TypeError) as exc:
        emit("error", code=EXIT_USAGE, message=f"bad spec: {exc}")
        return EXIT_USAGE
    if argv[0] == "train":
        from ftctl.providers.trainer.train import train

        return train(spec)  # type: ignore[arg-type]
    from ftctl.providers.trainer.answer import answer

    return answer(spec)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
