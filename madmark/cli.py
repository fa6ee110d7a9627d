"""The ``madmark`` command line: ``madmark <command> [hydra overrides]``."""
from __future__ import annotations

import importlib
import sys

#: command → (module with ``main(args) -> int``, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("madmark.commands.run", "run or resume a self-consuming loop experiment (Hydra)"),
    "train-watermark": ("madmark.commands.train_watermark",
                        "train a learned watermarker and write its model card (Hydra)"),
    "embed": ("madmark.commands.embed", "watermark a folder of images into a new folder of PNGs"),
    "detect": ("madmark.commands.detect",
               "test images or text (.txt, .jsonl) for a key's watermark (CSV)"),
    "filter": ("madmark.commands.filter",
               "split a dataset into kept and flagged lists by watermark detection"),
    "eval-watermark": ("madmark.commands.eval_watermark",
                       "robustness table of a watermark method under the attack grid (Hydra)"),
    "radioactivity": ("madmark.commands.radioactivity",
                      "test whether a run's model was trained on data marked with its key"),
    "report": ("madmark.commands.report", "rewrite a run's report.md and plots from results.csv"),
    "fetch-corpus": ("madmark.commands.fetch_corpus",
                     "download a text corpus (shakespeare) into ~/.cache/madmark/corpora"),
}

USAGE = """usage: madmark <command> [overrides ...]

commands:
{commands}

`madmark <command> --help` shows a command's config; overrides are Hydra's key=value,
`-m` runs a multirun sweep (e.g. madmark run -m loop.bias=1.0,0.8 seed=0,1)."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"madmark: error: unknown command '{command}' — use one of "
              f"{', '.join(COMMANDS)} (madmark --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
