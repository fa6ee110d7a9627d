"""Hydra launchers as config choices (joblib, Slurm via submitit); auto_resume of requeued jobs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from madmark.rundir import read_csv
from madmark.threads import THREAD_VARS, cpus_available
from tests.madmark.conftest import REPO, madmark_subprocess, preempt_after_generation

#: two generations of an analytic Gaussian loop without the feature metrics (~1 s in-process)
TINY = ["data=gaussian", "model=gaussian", "loop.generations=2", "data.dim=2", "data.n_train=200",
        "data.n_reference=200", "eval.enabled=false", "progress=false"]
NO_JOBLIB = "hydra-joblib-launcher is not installed (pip install 'madmark[joblib]')"
NO_SUBMITIT = "hydra-submitit-launcher is not installed (pip install 'madmark[slurm]')"


def _status(run: Path) -> str:
    return json.loads((run / "status.json").read_text())["state"]


# ---- joblib -------------------------------------------------------------------------------------

def test_joblib_multirun_equals_the_basic_launcher(tmp_path, cli, monkeypatch):
    """Also the thread budget (madmark/threads.py): each of the 2 concurrent jobs computes with
    cpus ÷ 2 threads, applied inside its joblib worker; the sequential launcher's with all."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason=NO_JOBLIB)
    for var in THREAD_VARS:                        # no inherited cap: the launcher's budget
        monkeypatch.delenv(var, raising=False)
    cpus = cpus_available()
    sweep = ["-m", *TINY, "seed=0,1", f"out_dir={tmp_path / 'outputs'}"]
    done = madmark_subprocess("run", *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                              f"hydra.sweep.dir={tmp_path / 'joblib'}", timeout=240)
    assert done.returncode == 0, done.stderr
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    code, _, err = cli("run", *sweep, f"hydra.sweep.dir={tmp_path / 'basic'}")
    assert code == 0, err
    for job, seed in (("0", 0), ("1", 1)):
        run = tmp_path / "joblib" / job
        assert _status(run) == "complete"
        env = json.loads((run / "env.json").read_text())
        assert env["seed"] == seed
        threads = env["threads"]
        assert (threads["budget"], threads["source"], threads["n_jobs"]) == (
            max(1, cpus // 2), "affinity / n_jobs", 2)
        assert threads["torch_threads"] == threads["budget"]          # what torch really used
        assert set(threads["libraries"].values()) == {threads["budget"]}
        basic_threads = json.loads((tmp_path / "basic" / job / "env.json").read_text())["threads"]
        assert (basic_threads["budget"], basic_threads["source"], basic_threads["torch_threads"]
                ) == (cpus, "affinity", cpus)
        assert [r["generation"] for r in read_csv(run / "results.csv")] == ["1", "2"]
        basic = tmp_path / "basic" / job / "results.csv"
        assert (run / "results.csv").read_text() == basic.read_text()
    assert (tmp_path / "joblib" / "0" / "results.csv").read_text() != \
        (tmp_path / "joblib" / "1" / "results.csv").read_text()


# ---- Slurm (hydra-submitit-launcher) -------------------------------------------------------------

def test_slurm_launcher_config_becomes_sbatch_options(tmp_path, monkeypatch):
    """Compose hydra/launcher=slurm, let the real launcher build its submitit executor (a stub
    ``srun`` on PATH stands in for the cluster) and read the sbatch script it would submit."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=NO_SUBMITIT)
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from madmark.hydra_app import config_dir

    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
            "hydra.launcher.mem_gb=16", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.launcher.array_parallelism == 16

    class Submitted(Exception):
        pass

    def refuse(executor, *args, **kwargs):
        raise Submitted(executor)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", refuse)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Submitted) as submitted:
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    slurm = submitted.value.args[0]._executor
    script = slurm._make_submission_file_text("python job.py", "uid")
    for line in ("--partition=gpu", "--time=90", "--mem=16GB", "--gpus-per-node=1",
                 "--cpus-per-task=8", "--ntasks-per-node=1", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in script, line
    assert slurm.parameters["array_parallelism"] == 16 and slurm.max_num_timeout == 3


# ---- auto_resume: a relaunched job continues the run in its folder -------------------------------


def test_auto_resume_continues_an_interrupted_run(cli, tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli("run", *TINY, f"hydra.run.dir={full}")[0] == 0
    command = ["run", *TINY, "auto_resume=true", f"hydra.run.dir={cut}"]
    with monkeypatch.context() as m:
        preempt_after_generation(m, 1)
        assert cli(*command)[0] == -1
    assert sorted(p.name for p in (cut / "state").iterdir()) == ["g0001.pt"]
    assert _status(cut) == "failed"

    code, _, err = cli(*command)                               # the identical command, relaunched
    assert code == 0, err
    assert _status(cut) == "complete"
    assert list(cut.glob("env_resume_*.json"))
    assert (cut / "results.csv").read_text() == (full / "results.csv").read_text()

    before = (cut / "results.csv").read_text()
    code, out, _ = cli(*command)                               # once more: nothing left to do
    assert code == 0 and "already complete" in out
    assert (cut / "results.csv").read_text() == before


def test_without_auto_resume_a_used_run_dir_is_refused(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", *TINY, f"hydra.run.dir={run}")[0] == 0
    code, _, err = cli("run", *TINY, f"hydra.run.dir={run}")
    assert code == 2 and "already holds a run" in err and "auto_resume=true" in err
    assert len(err.strip().splitlines()) == 1


def test_auto_resume_refuses_a_different_config(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", *TINY, "auto_resume=true", f"hydra.run.dir={run}")[0] == 0
    before = (run / "results.csv").read_text()
    code, _, err = cli("run", *TINY, "auto_resume=true", "seed=1", "loop.bias=0.9",
                       f"hydra.run.dir={run}")
    assert code == 2 and "another config" in err and "(seed, " in err and "loop.bias" in err
    assert len(err.strip().splitlines()) == 1
    assert (run / "results.csv").read_text() == before


# ---- a real preemption: submitit's local executor requeues the job ------------------------------

def _task_pids(submitit_dir: Path) -> list[int]:
    """Processes running this sweep's submitit tasks (``python -m submitit.core._submit <dir>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and any(str(submitit_dir).encode() in c for c in cmd):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job through /proc")
def test_preempted_submitit_job_is_requeued_and_resumes(tmp_path):
    """USR2 (Slurm's preemption / timeout warning, here from the test) makes submitit requeue the
    job; the requeued job lands in the same folder and auto_resume continues it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=NO_SUBMITIT)
    args = ["data=digits", "model=pca_gmm", "model.n_components=16", "model.gmm_components=8",
            "model.max_iter=60", "loop.generations=8", "eval.enabled=false", "progress=false",
            "seed=7", "auto_resume=true", f"out_dir={tmp_path / 'outputs'}"]
    full = madmark_subprocess("run", *args, f"hydra.run.dir={tmp_path / 'full'}", timeout=300)
    assert full.returncode == 0, full.stderr

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "madmark", "run", "-m", *args,
                             "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (sweep / "0" / "state" / "g0002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "sweep ended before the preemption"
        time.sleep(0.01)
    (pid,) = _task_pids(sweep / ".submitit")
    os.kill(pid, signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0
    run = sweep / "0"
    assert _status(run) == "complete"
    assert list(run.glob("env_resume_*.json")), "the job was not requeued (it finished first?)"
    assert (run / "results.csv").read_text() == (tmp_path / "full" / "results.csv").read_text()


def test_auto_resume_accepts_a_run_recorded_before_a_default_was_spelled_out(cli, tmp_path):
    """A run recorded before the schemas listed every constructor argument lacks some keys; they
    ran with the constructor's default, so a requeued job continues (also with another thread
    budget). A non-default value (or a key that is no constructor argument) is still a different
    config."""
    from omegaconf import OmegaConf

    from madmark.run_opening import config_changes

    run = tmp_path / "run"
    assert cli("run", *TINY, "auto_resume=true", f"hydra.run.dir={run}")[0] == 0
    recorded = OmegaConf.load(run / "config.yaml")
    older = OmegaConf.to_container(recorded)
    assert older["data"]["seed"] == 0                  # the run's seed = Gaussian's default seed
    del older["data"]["seed"]
    del older["threads"]                  # recorded before the thread budget; threads is volatile
    OmegaConf.save(OmegaConf.create(older), run / "config.yaml")
    code, out, err = cli("run", *TINY, "auto_resume=true", "threads=1", f"hydra.run.dir={run}")
    assert code == 0 and "already complete" in out, err
    changed = OmegaConf.merge(recorded, {"data": {"seed": 12345}})
    assert config_changes(OmegaConf.create(older), changed) == ["data.seed"]
    assert config_changes(OmegaConf.create(older), OmegaConf.merge(recorded, {"extra": 1})) == [
        "extra"]
