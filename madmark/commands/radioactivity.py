"""``madmark radioactivity <run_dir | run_dir/state/g<t>.pt> [generation= n=2000 alpha=0.01
clean_run= clean_generation=1 key_file= other_key=false seed=0 device=cpu out=]``

Tests whether the generative model of a run's generation was trained on data marked with the run's
watermark key: the matched bits of M of its samples against the key's message, by the exact
message sign-flip test (eval/radioactivity.py). M samples of a model trained on clean data (default:
generation 1 of the same run) are reported beside it for comparison. Writes a JSON record
(default ``<run_dir>/radioactivity/g<t>_n<M>.json``; an existing file is never overwritten) and
prints one line. No key material is written. A ``key_file`` holding another key than the one the
run marked with is refused (the fingerprints differ); ``other_key=true`` tests it anyway (a control:
a key the model never saw should not be flagged).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from madcore.files import atomic_write_text
from madmark.commands.options import RadioactivityOptions, parse
from madcore.errors import MadmarkError
from madmark.hydra_app import report_error
from madmark.radioactivity import radioactivity

OPTIONS = RadioactivityOptions


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        opts = parse(args, ["run"], OPTIONS, "radioactivity")
        result, info = radioactivity(opts["run"], generation=opts["generation"] or None,
                                     n=opts["n"], clean_run=opts["clean_run"] or None,
                                     clean_generation=opts["clean_generation"],
                                     alpha=opts["alpha"], key_file=opts["key_file"],
                                     other_key=opts["other_key"],
                                     seed=opts["seed"], device=opts["device"])
        out = Path(opts["out"] or Path(info["run"]) / "radioactivity" /
                   f"g{info['generation']:04d}_n{opts['n']}_seed{opts['seed']}.json")
        if out.exists():
            raise MadmarkError(f"{out} already exists (nothing is overwritten)",
                               "pass out=<new json path> or another seed=")
    except MadmarkError as e:
        return report_error(e)
    record = {**info, **{k: _json_number(v) for k, v in result.as_dict(prefix="").items()}}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    verdict = "FLAGGED" if result.flagged else "not flagged"
    print(f"generation {info['generation']} vs clean generation {info['clean_generation']}: "
          f"bit accuracy {result.bit_accuracy:.4f} vs {result.clean_bit_accuracy:.4f} "
          f"(M = {result.n_samples}, K = {result.num_bits}), sign-flip p = {result.p_value:.3g} "
          f"(binomial {result.p_value_binomial:.3g}, Welch vs clean {result.p_value_welch:.3g}): "
          f"{verdict} at alpha={result.alpha}; wrote {out}")
    return 0
