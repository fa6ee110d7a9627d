"""Speed of the text watermarks: detection tokens/s of KGW and EXP, and what each chooser costs
generation, measured in the same process.

Run from the repository root (about a minute on 2 shared CPU cores):

    python benchmarks/text_watermark_speed.py                       # bigram stand-in, V = 2048
    python benchmarks/text_watermark_speed.py --model bigram --vocab 2048 --n 64 --length 64
    python benchmarks/text_watermark_speed.py --device cuda --n 1024 --detect-n 20000

The model is any ``loops.models.text_lm.TextLM`` built by a factory of :data:`MODELS`, chosen with
``--model``; only its ``sample(n, generator=, chooser=, length=)`` is used, so the n-gram and GPT
models plug in as factories (fit on real text) without touching the timing code. Until they land
the one model is ``bigram``: the fixed random bigram chain of the tests
(tests/watermark/text/bigram_lm.py), ``--scale 2`` giving about 5.7 nats per token at V = 2048.

Generation: N sequences of L tokens drawn three ways — the default multinomial chooser, the KGW
chooser (δ = 2, γ = 0.25, h = 1) and the EXP chooser (h = 2) — in rotating order over
``--repeats`` rounds (so a change of machine load hits all three), best round each. Prints
tokens/s for each and ``ratio_<method>_generation`` = marked tokens/s ÷ unmarked tokens/s (1.0 =
free). Detection: ``score`` of ``--detect-n`` marked documents (per-document de-duplication),
best of the repeats after one warm-up call. KGW's one-time table of the V green lists of h = 1
is built before the rounds and timed separately (``kgw_table_s``). Prints tokens/s and the machine's load average.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loops.models.text_lm import TextLM  # noqa: E402
from watermark import SecretKey  # noqa: E402
from watermark.text import KGW, GumbelMax  # noqa: E402


def bigram(args) -> TextLM:
    """The tests' stand-in: a fixed random bigram chain of ``--vocab`` tokens."""
    from tests.watermark.text.bigram_lm import BigramLM
    return BigramLM(args.vocab, scale=args.scale, seed=0, seq_len=args.length)


def _token_windows(args) -> torch.Tensor:
    """Training windows for the real models: sequences of the bigram stand-in (no corpus
    needed), 2,000 × ``args.length`` tokens of a ``args.vocab``-token vocabulary."""
    return bigram(args).sample(2000, generator=torch.Generator().manual_seed(1),
                               length=args.length)


def ngram(args) -> TextLM:
    """model=ngram (trigram Kneser–Ney) fitted on the stand-in's windows."""
    from loops.models import NGramModel

    model = NGramModel(order=3, vocab_size=args.vocab)
    model.fit(_token_windows(args), None)
    return model


def gpt(args) -> TextLM:
    """model=gpt (the default config's network) after a short fit (20 steps: the speed of
    sampling does not depend on how well it is trained)."""
    from loops.models import GPTModel

    model = GPTModel(vocab_size=args.vocab, steps=20, warmup_steps=2)
    model.fit(_token_windows(args), torch.Generator().manual_seed(0))
    return model


#: --model name -> factory(args) -> a fitted TextLM
MODELS: dict[str, Callable[[argparse.Namespace], TextLM]] = {"bigram": bigram, "ngram": ngram,
                                                             "gpt": gpt}


def loadavg() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    return "n/a"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bigram", choices=sorted(MODELS), help="the TextLM to sample")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary size V (bigram model)")
    ap.add_argument("--scale", type=float, default=2.0, help="bigram logit scale (entropy falls as it grows)")
    ap.add_argument("--n", type=int, default=64, help="sequences per generation round")
    ap.add_argument("--length", type=int, default=64, help="tokens per sequence L")
    ap.add_argument("--detect-n", type=int, default=2000, help="documents scored per detection round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best is kept")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    model = MODELS[args.model](args)
    if hasattr(model, "table"):
        model.table = model.table.to(device)
    v = model.vocab_size
    key = SecretKey("benchmark key")
    choosers = {"plain": None, "kgw": KGW(key, v), "exp": GumbelMax(key, v)}
    print(f"device: {device} ({name}), torch threads {torch.get_num_threads()}, model {args.model}, "
          f"V = {v}, N = {args.n}, L = {args.length}, load {loadavg()}")

    table = timed(lambda: choosers["kgw"].green_mask(torch.ones(1, 1, dtype=torch.long, device=device)),
                  device)
    best = {k: float("inf") for k in choosers}
    names = list(choosers)
    for r in range(args.repeats):
        for k in names[r % 3:] + names[:r % 3]:                # rotate the order each round
            g = torch.Generator(device=device).manual_seed(r)
            best[k] = min(best[k], timed(lambda: model.sample(args.n, generator=g, chooser=choosers[k],
                                                              length=args.length), device))
    tokens = args.n * args.length
    rates = {k: tokens / s for k, s in best.items()}
    for k, rate in rates.items():
        print(f"generation_{k}_tokens_per_s: {rate:.0f}")
    for k in ("kgw", "exp"):
        print(f"ratio_{k}_generation: {rates[k] / rates['plain']:.3f}")

    print(f"kgw_table_s: {table:.3f}  (one-time: the V green lists of h = 1, built before the rounds)")
    for k in ("kgw", "exp"):
        wm = choosers[k]
        g = torch.Generator(device=device).manual_seed(100)
        docs = torch.cat([model.sample(min(args.n, args.detect_n), generator=g, chooser=wm, length=args.length)
                          for _ in range(-(-args.detect_n // min(args.n, args.detect_n)))])[:args.detect_n]
        wm.score(docs[:8])                                     # warm-up
        seconds = min(timed(lambda: wm.score(docs), device) for _ in range(args.repeats))
        res = wm.score(docs)
        print(f"detection_{k}_tokens_per_s: {docs.numel() / seconds:.0f}  ({len(docs)} documents, "
              f"TPR at p < 1e-5 {res.p_value.lt(1e-5).double().mean().item():.3f})")
        seconds = min(timed(lambda: wm.score(docs, dedup="corpus"), device) for _ in range(args.repeats))
        print(f"detection_{k}_corpus_dedup_tokens_per_s: {docs.numel() / seconds:.0f}")
    print(f"load after: {loadavg()}")


if __name__ == "__main__":
    main()
