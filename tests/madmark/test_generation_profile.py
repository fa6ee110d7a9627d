"""benchmarks/generation_profile.py: the stages of a real (tiny) run add up to its generations."""
import time

import pytest

import madmark.commands.run as run_command
from benchmarks.generation_profile import STAGES, StageClock, profile_run
from loops.engine import LoopEngine

from tests.madmark.conftest import FAST


def test_nested_stages_are_counted_once():
    """A timed call inside another counts for its own stage only: against the wall clock."""
    clock = StageClock()
    inner = clock.wrap("inner", lambda: time.sleep(0.05))

    def outer():
        time.sleep(0.02)
        inner()
    t0 = time.perf_counter()
    clock.wrap("outer", outer)()
    wall = time.perf_counter() - t0
    s = clock.seconds[clock.bucket]
    assert s["inner"] >= 0.05 and s["outer"] >= 0.02
    assert s["inner"] + s["outer"] == pytest.approx(wall, abs=0.01)


def test_profile_of_a_two_generation_run(tmp_path, monkeypatch):
    """Shares are non-negative and add to 1, fitting takes time, and every patched function is
    restored afterwards. report.md's plots cost seconds on a loaded CPU: stubbed here (the
    profiler wraps whatever write_report is)."""
    monkeypatch.setattr(run_command, "write_report", lambda path: path)
    generation = LoopEngine.generation
    overrides = [o for o in FAST if not o.startswith("loop.generations")] + ["loop.generations=2"]
    profile = profile_run(overrides, str(tmp_path))
    assert sorted(profile.wall) == [1, 2]
    shares = profile.shares()
    assert set(shares) == set(STAGES)
    assert all(v >= 0 for v in shares.values())
    assert sum(shares.values()) == pytest.approx(1.0)
    for t in (1, 2):
        stages = profile.stages(t)
        assert stages["fit"] > 0 and stages["sample"] > 0 and stages["checkpoint"] > 0
        assert sum(stages.values()) == pytest.approx(profile.wall[t])
    assert profile.stages(1)["knn"] > 0 and profile.stages(1)["fid_kid"] > 0    # eval on (raw)
    assert LoopEngine.generation is generation
    assert run_command.write_report.__name__ == "<lambda>"                         # not wrapped
