"""``madmark eval-watermark`` on text data: the text watermarks' attack × strength table.

    madmark eval-watermark data=shakespeare "method=[kgw,exp]"
    madmark eval-watermark data=textfile data.path=corpus/ method=kgw text.kgw.text.gamma=0.5

A language model (``text.model``, default the trigram Kneser–Ney ``model=ngram``) is fitted on
``text.n_fit`` random windows of the source's train split. Each method draws ``text.n_docs``
marked documents from it at temperature ``text.bias`` with the method as the token chooser, all
with one key; the first ``text.n_docs`` windows of the held-out reference split are the human
text: the unmarked control (its flag rate is the false-positive side) and what the copy-paste
attack mixes in. Every attack of ``watermark.text.attacks.TEXT_ATTACK_GRID`` then hits the
marked documents and they are scored again (:func:`madmark.text_attack_grid.text_attack_rows`).

The cost of the mark in quality is the perplexity of the marked documents under the model that
drew them (``ppl_marked``) beside that of as many unmarked samples of it (``ppl_unmarked``):
KGW's logit bias raises it, EXP is distortion-free over keys and should not.

Writes ``metrics.csv`` (one row per method × attack × strength), ``comparison.md`` (detection
rate / median z per attack, one column per method) and ``plots/detect_rate.png``.
"""
from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from madcore.errors import MadmarkError
from madcore.figures import new_figure, save_png
from madcore.files import atomic_write_text
from madmark.commands.eval_watermark import attack_label, by_method
from madmark.data.base import Splits
from madmark.rundir import RunDir, rows_to_csv
from madmark.text_attack_grid import text_attack_rows
from madmark.text_run import TEXT_METHODS, target_class
from watermark import SecretKey
from watermark.text import TextWatermark


def check_text_settings(cfg: DictConfig, names: list[str]) -> None:
    """Refuse (one-line MadmarkError) what eval-watermark on text cannot do: an image method,
    regeneration attacks, a model that does not take text, sizes below one document."""
    images = [n for n in names if n not in TEXT_METHODS]
    if images:
        raise MadmarkError(f"method={images[0]} marks images, but data is text",
                           f"pass method={' or method='.join(TEXT_METHODS)}, or "
                           f"\"method=[{','.join(TEXT_METHODS)}]\"")
    if list(cfg.regeneration.attacks):
        raise MadmarkError("regeneration.attacks regenerate images; data is text",
                           "set regeneration.attacks=[] (the text grid has deletion, "
                           "substitution, truncation and copy-paste)")
    cls = target_class(cfg.text.model)
    if cls is None or "text" not in getattr(cls, "accepts", ()):
        name = getattr(cls, "__name__", cfg.text.model.get("_target_"))
        raise MadmarkError(f"text.model {name} does not take text data",
                           "choose a text model: model@text.model=ngram (or gpt, gpt_tiny)")
    for field in ("n_docs", "n_fit"):
        value = cfg.text.get(field)
        if value is not None and int(value) < 1:
            raise MadmarkError(f"text.{field}={value} must be at least 1",
                               f"set text.{field}=500" if field == "n_docs" else
                               f"set text.{field}=null (every train window)")


def build_text_method(name: str, cfg: DictConfig, key: SecretKey, vocab_size: int,
                      alpha: float) -> TextWatermark:
    """Method ``name`` with the settings of ``cfg.text.<name>.text`` (configs/watermark/<name>.yaml),
    its flag at ``alpha``."""
    try:
        return TEXT_METHODS[name](key, vocab_size, instantiate(cfg.text[name].text, alpha=alpha))
    except ValueError as e:
        raise MadmarkError(f"method={name}: {e}", f"fix the setting under text.{name}.text")


def fitted_model(cfg: DictConfig, splits: Splits, seed: int):
    """``cfg.text.model`` fitted on ``text.n_fit`` seeded random train windows (null: all)."""
    model = instantiate(cfg.text.model, vocab_size=splits.vocab_size)
    train = splits.train
    n_fit = cfg.text.get("n_fit")
    if n_fit is not None and int(n_fit) < len(train):
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = train[pick[:int(n_fit)].sort().values]
    model.fit(train, torch.Generator().manual_seed(seed))
    return model


def perplexity(model, docs: torch.Tensor) -> float:
    """exp(−mean log-likelihood per token) of ``docs`` (N, L) under ``model``."""
    return math.exp(-float(model.log_likelihood(docs).sum()) / docs.numel())


def comparison_markdown(rows: list[dict], data_name: str) -> str:
    """One line per attack, "detection rate / median z" per method; the header gives each
    method's perplexity cost and its flag rate on the human documents."""
    groups = by_method(rows)
    first = next(iter(groups.values()))
    header = [f"{n} (ppl {g[0]['ppl_marked']:.1f} vs {g[0]['ppl_unmarked']:.1f} unmarked; human "
              f"flagged {g[0]['human_flag_rate']:.3f})" for n, g in groups.items()]
    lines = [f"Detection rate / median z at α = {first[0]['alpha']} on {first[0]['n_docs']} marked "
             f"documents of {first[0]['doc_tokens']} tokens ({data_name}; drawn by "
             f"{first[0]['model']} at λ = {first[0]['bias']}); human: as many held-out real "
             "documents.", "", "| attack | tokens kept | " + " | ".join(header) + " |",
             "| --- | --- |" + " --- |" * len(groups)]
    for i, r in enumerate(first):
        cells = [f"{g[i]['detect_rate']:.3f} / {g[i]['median_z']:.2f}" for g in groups.values()]
        lines.append(f"| {attack_label(r)} | {r['mean_tokens']:.1f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def plot_detect_rate(rows: list[dict], path) -> None:
    """Grouped bars: detection rate per attack, one colour per method; the dashed line is α."""
    groups = by_method(rows)
    labels = [attack_label(r) for r in next(iter(groups.values()))]
    width = 0.8 / len(groups)
    fig, ax = new_figure(figsize=(max(7, 0.45 * len(labels)), 4.2))
    for j, (name, group) in enumerate(groups.items()):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(group))]
        ax.bar(xs, [r["detect_rate"] for r in group], width, label=name)
    ax.axhline(rows[0]["alpha"], color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"detected at α = {rows[0]['alpha']}")
    ax.set_title(f"text watermark detection after each attack, {rows[0]['n_docs']} documents")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def evaluate_text(cfg: DictConfig, run: RunDir, names: list[str], key: SecretKey,
                  splits: Splits, data_name: str) -> None:
    """The text branch of ``madmark eval-watermark`` (module docstring); the caller has run
    :func:`check_text_settings` (before reading the corpus) and written config and env.json."""
    seed, alpha = int(cfg.seed), float(cfg.alpha)
    n_docs, bias = int(cfg.text.n_docs), float(cfg.text.bias)
    human = splits.reference[:n_docs]
    if len(human) < n_docs:
        raise MadmarkError(f"text.n_docs={n_docs} but the reference split holds {len(human)} "
                           "documents", f"set text.n_docs={len(human)} or fewer")
    model = fitted_model(cfg, splits, seed)
    unmarked = model.sample(n_docs, bias, generator=torch.Generator().manual_seed(seed))
    ppl_unmarked = perplexity(model, unmarked)
    rows = []
    for i, name in enumerate(names):
        wm = build_text_method(name, cfg, key, splits.vocab_size, alpha)
        g = torch.Generator().manual_seed(seed * 1000 + 17 * (i + 1))
        marked = model.sample(n_docs, bias, generator=g, chooser=wm)
        extra = {"model": type(model).__name__, "bias": bias, "doc_tokens": marked.shape[1],
                 "ppl_marked": perplexity(model, marked), "ppl_unmarked": ppl_unmarked,
                 "settings": " ".join(f"{k}={v}" for k, v in vars(wm.config).items()
                                      if k != "alpha")}
        rows += [{**r, **extra} for r in text_attack_rows(wm, marked, human, splits.vocab_size,
                                                          alpha, seed)]
    atomic_write_text(run.path / "metrics.csv", rows_to_csv(rows))
    table = comparison_markdown(rows, data_name)
    atomic_write_text(run.path / "comparison.md", table)
    plot_detect_rate(rows, run.path / "plots" / "detect_rate.png")
    print(table, end="")
    print(f"wrote {run.path}")
