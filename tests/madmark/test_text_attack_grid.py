"""The text robustness table on a toy chain: every grid attack, monotone in its strength."""
import torch

from madmark.text_attack_grid import text_attack_rows
from tests.watermark.text.bigram_lm import BigramLM
from watermark.text import KGW, GumbelMax
from watermark.text.attacks import TEXT_ATTACK_GRID


def test_the_grid_rows_fall_with_attack_strength_and_human_text_is_not_flagged():
    lm = BigramLM(512, scale=1.0, seed=0, seq_len=96)
    human = lm.sample(200, generator=torch.Generator().manual_seed(1))
    for wm in (KGW("grid-key", 512), GumbelMax("grid-key", 512)):
        marked = lm.sample(100, generator=torch.Generator().manual_seed(2), chooser=wm)
        rows = text_attack_rows(wm, marked, human, 512, alpha=0.01, seed=0)
        assert [(r["attack"], r["strength"] or None) for r in rows[1:]] == TEXT_ATTACK_GRID
        assert rows[0]["attack"] == "none" and rows[0]["detect_rate"] > 0.95
        assert rows[0]["human_flag_rate"] <= 0.05
        by = {}
        for r in rows[1:]:
            by.setdefault(r["attack"], []).append(r["median_z"])
        for name in ("delete", "substitute", "copy_paste"):          # stronger: lower z
            assert by[name] == sorted(by[name], reverse=True), (wm.name, name, by[name])
        truncated = [r["mean_tokens"] for r in rows if r["attack"] == "truncate"]
        assert truncated == sorted(truncated, reverse=True) and truncated[-1] == 24
