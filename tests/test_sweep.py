"""Sweeps: the spec language, the paper's exact counts, shared stages, the local executor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import unfit_weights
from mlflow.tracking import MlflowClient

import zoo
from zoo.cli import main
from zoo.config import resolve
from zoo.errors import ConfigError
from zoo.sweep import expand, load_spec, make_plan

SWEEPS = Path(__file__).parent.parent / "sweeps"


def _plan_json(capsys, spec) -> dict:
    assert main(["sweep", "plan", str(spec), "--json", "--images-per-s", "100"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("name", "configs", "runs", "pretrain_stages"),
    [
        ("defocus", 2400, 7200, 30),
        ("noise", 60, 180, 15),
        ("structure", 918, 2754, 54),
        ("baseline", 240, 720, None),
    ],
)
def test_paper_series_have_the_exact_counts(capsys, name, configs, runs, pretrain_stages):
    plan = _plan_json(capsys, SWEEPS / f"{name}.yaml")
    assert (plan["configs"], plan["runs"], plan["seeds"]) == (configs, runs, 3)
    if pretrain_stages:
        assert plan["stage_trainings"] == {"pretrain": pretrain_stages, "transfer": runs}
        assert plan["stage_trainings_unshared"] == {"pretrain": runs, "transfer": runs}
        assert plan["image_passes"] < plan["image_passes_unshared"]


def test_defocus_sharing_saves_the_predicted_image_passes(capsys):
    plan = _plan_json(capsys, SWEEPS / "defocus.yaml")
    # 30 pretrainings of 512 images × 8 × 10 epochs, 7200 transfers of 240 images on average
    assert plan["image_passes"] == 30 * 40960 + 7200 * 240 * 80
    assert plan["image_passes_unshared"] / plan["image_passes"] == pytest.approx(3.1, abs=0.05)


DEMO = SWEEPS / "demo.yaml"


def _estimates(lines: list[str]) -> list[str]:
    """The lines of a plan that give a time estimate ("1.2 h (...)")."""
    return [line for line in lines if re.search(r"\d h \(", line)]


def test_a_plan_without_a_price_measures_nothing_and_says_how_to_get_one():
    code = (
        "import sys; from zoo.cli import main\n"
        f"code = main(['sweep', 'plan', {str(DEMO)!r}])\n"
        "print('exit', code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    *lines, last = done.stdout.splitlines()
    assert last == "exit 0 False", done.stdout + done.stderr  # timing a step needs torch
    assert _estimates(lines) == []
    (hint,) = [line for line in lines if "no time estimate" in line]
    assert "--profile NAME (known: cpu-2core, " in hint and "--images-per-s N" in hint
    assert "`zoo calibrate NAME` on a compute node" in hint


@pytest.mark.parametrize(
    ("argv", "source"),
    [
        (["--images-per-s", "100"], "(--images-per-s, training passes only)"),
        (["--profile", "cpu-2core"], "profile cpu-2core (/"),
    ],
    ids=["rate", "profile"],
)
def test_a_priced_plan_prints_one_estimate_and_where_it_came_from(capsys, argv, source):
    assert main(["sweep", "plan", str(DEMO), *argv]) == 0
    (estimate,) = _estimates(capsys.readouterr().out.splitlines())
    assert source in estimate
    if "--profile" in argv:
        assert "zoo/profiles/cpu-2core.json: cpu (x86_64" in estimate


def test_overrides_apply_to_the_base_and_show_prints_a_run_as_zoo_train_takes_it(capsys):
    plain = _plan_json(capsys, DEMO)
    assert main(["sweep", "plan", str(DEMO), "stages.0.epochs=3", "--json"]) == 0
    longer = json.loads(capsys.readouterr().out)
    # the 4 shared pretrainings (32 images × 8 transforms) train one epoch more
    assert longer["image_passes"] - plain["image_passes"] == 4 * 32 * 8
    assert (longer["priced_by"], plain["priced_by"]) == (None, "--images-per-s")
    assert main(["sweep", "plan", str(DEMO), "stages.0.epochs=3", "--show", "5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    run = make_plan(load_spec(DEMO, ["stages.0.epochs=3"])).runs[5]
    assert shown["stages"][0]["epochs"] == 3 and run.names["seed"] == 1
    assert resolve(shown).digest() == run.config.digest()


def test_baseline_mixes_major_and_minor_sets():
    runs = expand(load_spec(SWEEPS / "baseline.yaml"))
    first = runs[0]
    mix = first.config.datasets["mix"]["mix"]
    assert (
        sum(mix.values()) == 512 and first.names["minor_count"] == 512 - first.names["major_count"]
    )
    assert set(first.config.validate_on) == set(mix)


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


BASE = textwrap.dedent("""\
    name: t
    base:
      datasets: {a: {preset: defocus, defocus_nm: -10, image_size: 32, count: 20}}
      stages: [{name: s, train: a, epochs: 1}]
    """)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("axes: [{product: {lr: []}}]\n", "spec.axes.0.product.lr: .*non-empty list"),
        ("axes: [{grid: {lr: [1]}}]\n", "spec.axes.0.grid: unknown axis kind"),
        (
            "axes: [{product: {x: [1]}}]\nwhere: [{ne: [$x, $y]}]\n",
            "spec.where.0: unknown name 'y'",
        ),
        ("set: {stages.0.lr: $nope}\n", "spec.set.stages.0.lr: unknown name 'nope'"),
        (
            "axes: [{product: {x: [1]}}]\nset: {stages.0.lrr: $x}\n",
            "config.stages.0.lrr: unknown key",
        ),
        ("axes: [{product: {x: [1]}}]\nbogus: 1\n", "spec.bogus: unknown key"),
    ],
)
def test_spec_errors_exit_2_with_a_clear_message(tmp_path, capsys, extra, message):
    import re

    assert main(["sweep", "plan", str(_write(tmp_path, BASE + extra)), "--images-per-s", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.search(message, error), error


def test_axes_pairs_zip_derive_filters_and_order(tmp_path):
    spec = load_spec(
        _write(
            tmp_path,
            BASE
            + textwrap.dedent("""\
        axes:
          - pairs: {of: [p, q], values: [1, 2, 3], ordered: false, repeats: true}
          - zip: {lr: [0.1, 0.2], tag: [x, y]}
        derive: {total: {add: [$p, $q]}, label: {format: "{tag}-{p}"}}
        where: [{not: {eq: [$total, 6]}}]
        exclude: [{p: 1, q: 1, tag: x}]
        include: [{p: 9, q: 9, lr: 0.3, tag: z, total: 18, label: z-9}]
        set: {stages.0.lr: $lr, stages.0.name: "{label}"}
        seeds: [0, 1]
        """),
        )
    )
    runs = expand(spec)
    names = [(r.names["p"], r.names["q"], r.names["tag"], r.names["seed"]) for r in runs]
    # 6 unordered pairs with repeats, minus (3, 3) by the filter = 5, × 2 zipped - 1 excluded
    # = 9 configs + 1 included = 10, × 2 seeds
    assert len(runs) == 20
    assert names[:4] == [(1, 1, "y", 0), (1, 1, "y", 1), (1, 2, "x", 0), (1, 2, "x", 1)]
    assert runs[-1].config.stages[0].lr == 0.3 and runs[-1].config.stages[0].name == "z-9"
    assert isinstance(runs[0].config.stages[0].lr, float)
    assert [r.names for r in expand(spec)] == [r.names for r in runs]


def test_ordered_pairs_without_repeats(tmp_path):
    spec = load_spec(_write(tmp_path, BASE + "axes: [{pairs: {of: [a, b], values: [1, 2, 3]}}]\n"))
    assert [(r.names["a"], r.names["b"]) for r in expand(spec)] == [
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 3),
        (3, 1),
        (3, 2),
    ]


def test_share_stages_false_trains_every_stage_per_run(tmp_path):
    text = (SWEEPS / "noise.yaml").read_text() + "share_stages: false\n"
    plan = make_plan(load_spec(_write(tmp_path, text)))
    assert plan.counts()["stage_trainings"] == {"pretrain": 180, "transfer": 180}
    assert plan.counts()["jobs"] == {"run": 180}


def test_sweep_runs_shared_stages_once_and_a_second_run_trains_nothing(
    tiny_spec, tiny_runs, project, capsys
):
    spec = tiny_spec()
    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0
    runs = tiny_runs()
    stages = [r for r in runs if r.data.tags["zoo.kind"] == "stage"]
    transfers = [r for r in runs if r.data.tags["zoo.kind"] == "run"]
    assert len(stages) == 2 and len(transfers) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    stage_ids = {r.info.run_id: r.data.tags["zoo.axis.source"] for r in stages}
    for run in transfers:
        parent = run.data.tags["mlflow.parentRunId"]
        assert stage_ids[parent] == run.data.tags["zoo.axis.source"]
        assert run.data.tags["zoo.sweep"] == "tiny" and "zoo.axis.freeze" in run.data.tags
    assert len(list(project.stages.iterdir())) == 2 + 4

    capsys.readouterr()
    assert main(["sweep", "run", str(spec)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(tiny_runs()) == 6
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pretrain"]["finished"] == 2 and status["run"]["finished"] == 4


def test_failed_config_is_reported_and_the_others_finish(tiny_spec, tiny_runs, project, capsys):
    unfit_weights(project.root / "broken.safetensors")
    spec = tiny_spec(
        sources=("a",),
        extra={
            "axes": [{"product": {"source": ["a"], "init": ["best", "file:broken.safetensors"]}}],
            "set": {"stages.0.train": "$source", "stages.1.init": "$init"},
        },
    )
    assert main(["sweep", "run", str(spec)]) == 1
    output = capsys.readouterr().out
    assert "failed 1" in output and "broken.safetensors" in output
    by_init = {
        r.data.tags.get("zoo.axis.init"): r for r in tiny_runs() if r.data.tags["zoo.kind"] == "run"
    }
    assert by_init["best"].info.status == "FINISHED"
    assert by_init["file:broken.safetensors"].info.status == "FAILED"
    assert "broken.safetensors" in by_init["file:broken.safetensors"].data.tags["zoo.error"]


def test_failed_shared_stage_skips_its_dependents(tiny_spec, project, capsys):
    unfit_weights(project.root / "broken.safetensors")
    spec = tiny_spec(
        extra={
            "derive": {
                "init": {"lookup": ["$source", {"a": "random", "b": "file:broken.safetensors"}]}
            },
            "set": {
                "stages.0.train": "$source",
                "stages.0.init": "$init",
                "stages.1.freeze": "$freeze",
            },
        },
    )
    assert main(["sweep", "run", str(spec)]) == 1
    output = capsys.readouterr().out
    assert "failed 1, skipped 2" in output
    assert main(["sweep", "status", str(spec), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pretrain"]["finished"] == 1 and status["pretrain"]["failed"] == 1
    assert status["run"]["finished"] == 2 and status["run"]["skipped"] == 2


def test_packed_workers_give_the_metrics_of_a_run_alone(tiny_spec, project, tmp_path, monkeypatch):
    """Two runs side by side in two worker processes end exactly as each does alone."""
    spec = tiny_spec(sources=("a",))
    assert main(["sweep", "run", str(spec), "--workers", "2"]) == 0
    alone = type(project)(tmp_path / "alone")
    alone.root.mkdir()
    monkeypatch.setenv("ZOO_ROOT", str(alone.root))
    assert main(["sweep", "run", str(spec), "--workers", "1"]) == 0
    assert alone.tracking_db.exists() and len(list(alone.stages.iterdir())) == 3

    def histories(paths):
        client = MlflowClient(paths.tracking_uri)
        experiment = client.get_experiment_by_name("tiny").experiment_id
        return {
            r.data.tags["zoo.config_hash"]: [
                (m.step, m.value)
                for m in sorted(
                    client.get_metric_history(r.info.run_id, "val_loss/b"), key=lambda m: m.step
                )
            ]
            for r in client.search_runs([experiment])
        }

    assert histories(project) == histories(alone)


# The executor interface: job descriptions, rendered scripts, the requeue cap.

REFERENCE = Path(__file__).parent / "data" / "sbatch"
SUBMIT_OPTIONS = {
    "default": {},
    "gpu-site": {
        "partition": "gpu",
        "time": "4:00:00",
        "gpus_per_task": 1,
        "cpus_per_task": 4,
        "mem_per_task": "16G",
        "max_parallel": 8,
        "gpu_power": 250,
        "site_gpu_power": True,
        "grace_s": 300,
        "extra": ("--mail-type=END",),
    },
}


@pytest.mark.parametrize("name", sorted(SUBMIT_OPTIONS))
def test_rendered_sbatch_script_equals_its_reference(name):
    from zoo.paths import SubmissionPaths
    from zoo.sweep._slurm_submit import Array, SubmitOptions, render

    options = SubmitOptions(**SUBMIT_OPTIONS[name])
    options.validate()
    array = Array("runs-0", ["k"] * 5, task_count=5)
    submission = SubmissionPaths(Path("/project/.zoo/sweeps/tiny/20260101-000000"))
    script = render("tiny", array, submission, Path("/project"), options, "/usr/bin/python3")
    assert script == (REFERENCE / f"{name}.sbatch").read_text()


def test_a_newline_in_the_project_root_never_reaches_an_sbatch_script():
    """A comment or #SBATCH line must not be split into a command by a path."""
    from zoo.paths import SubmissionPaths
    from zoo.sweep._slurm_submit import Array, SubmitOptions, render

    root = Path("/project\ntouch /tmp/pwned")
    submission = SubmissionPaths(root / ".zoo/sweeps/tiny/20260101-000000")
    array = Array("runs-0", ["k"], task_count=1)
    with pytest.raises(ConfigError, match=r"is not allowed; expected no control characters"):
        render("tiny", array, submission, root, SubmitOptions(), "/usr/bin/python3")


def test_job_description_survives_a_json_round_trip(tiny_spec):
    from zoo.paths import ProjectPaths
    from zoo.sweep import Job, jobs_from_plan

    jobs = jobs_from_plan(
        make_plan(load_spec(tiny_spec())), "sqlite:///x.db", ProjectPaths(Path("/p"))
    )
    assert [j.kind for j in jobs] == ["dataset"] * 3 + ["stage"] * 2 + ["run"] * 4
    for job in jobs:
        assert Job.from_json(job.to_json()) == job
    assert jobs[-1].depends == (jobs[4].key,) and jobs[-1].tags["zoo.axis.source"] == "b"
    bad = json.loads(jobs[3].to_json()) | {"max_requeues": "3"}
    with pytest.raises(ConfigError, match=r"job\.max_requeues"):
        Job.from_json(json.dumps(bad))
    with pytest.raises(AttributeError):
        jobs[3].key = "other"


def test_jobs_of_an_axis_of_dates_travel_as_json(tiny_spec):
    """Axis values stay with the plan (a run's tags carry them as text), so an axis
    whose YAML values are dates still gives jobs an executor can hand to its workers."""
    import datetime

    from zoo.paths import ProjectPaths
    from zoo.sweep import Job, jobs_from_plan

    axes = [{"product": {"source": ["a"], "day": [datetime.date(2024, 1, 1)]}}]
    plan = make_plan(
        load_spec(tiny_spec(extra={"axes": axes, "set": {"stages.0.train": "$source"}}))
    )
    jobs = jobs_from_plan(plan, "sqlite:///x.db", ProjectPaths(Path("/p")))
    assert plan.runs[0].names["day"] == datetime.date(2024, 1, 1)
    for job in jobs:
        assert Job.from_json(job.to_json()) == job
    assert jobs[-1].tags["zoo.axis.day"] == "2024-01-01"


@pytest.mark.parametrize(
    ("counter", "restarts", "requeued"),
    [("slurm", 2, True), ("slurm", 3, False), ("job", 3, False)],
)
def test_preempted_run_requeues_until_the_cap_then_ends_failed(
    tiny_spec, tiny_runs, project, monkeypatch, counter, restarts, requeued
):
    """SLURM counts restarts, other backends the requeues the job carries; past
    --max-requeues (3) the run ends FAILED naming the cap."""
    from dataclasses import replace

    from zoo.store import Tracker
    from zoo.sweep import jobs_from_plan, run_job
    from zoo.train import STOP, Preempted

    plan = make_plan(load_spec(tiny_spec(sources=("a",))))
    jobs = jobs_from_plan(plan, project.tracking_uri, project, max_requeues=3)
    stage, job, _ = (j for j in jobs if j.kind != "dataset")
    Tracker(project.tracking_uri, project)
    if counter == "slurm":
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    else:
        stage = replace(stage, requeues=restarts)
    STOP.set()
    try:
        if requeued:
            with pytest.raises(Preempted):
                run_job(stage)
        else:
            result = run_job(stage)
            assert result.status == "failed" and "--max-requeues 3" in result.reason
    finally:
        STOP.clear()
    (run,) = tiny_runs()
    assert run.info.status == ("RUNNING" if requeued else "FAILED")
    if not requeued:
        assert "preempted 4 times" in run.data.tags["zoo.error"]
        assert run_job(job).status == "skipped"  # its stage never finished


def test_a_local_sweep_starts_its_longest_runs_first(tiny_spec, tiny_runs, project):
    """Ready runs start by the image passes they make, most first (here: by transfer
    size), so a sweep ends on its shortest runs rather than on a long one started last."""
    from zoo.store import Tracker
    from zoo.sweep import run_sweep

    spec = tiny_spec(
        extra={
            "axes": [{"product": {"source": ["a"], "size": [2, 8, 4]}}],
            "set": {"stages.0.train": "$source", "stages.1.size": "$size"},
        }
    )
    report = run_sweep(make_plan(load_spec(spec)), Tracker(paths=project), echo=lambda _: None)
    assert len(report.finished) == 1 + 3
    runs = [r for r in tiny_runs() if r.data.tags["zoo.kind"] == "run"]
    started = sorted(runs, key=lambda r: r.info.start_time)
    assert [r.data.tags["zoo.axis.size"] for r in started] == ["8", "4", "2"]


def test_runs_that_freeze_a_part_start_after_those_that_train_it_all(tiny_spec):
    """Equal image passes, unequal work: a frozen part spares its weight gradients (the
    frozen encoder also its input gradients), so those runs are shorter and end a sweep."""
    from zoo.sweep._plan import longest_first

    plan = make_plan(load_spec(tiny_spec(sources=("a",), freezes=("encoder", "none", "decoder"))))
    jobs = {job.key: job for job in plan.jobs}
    order = [jobs[key].config.stages[1].freeze for key in longest_first(plan)[1:]]
    assert order == ["none", "decoder", "encoder"]


def _where_a_freed_block_went(size: int) -> tuple[int, int]:
    """(bytes mapped for a block of ``size`` bytes while it is held, heap bytes handed
    back to the kernel when it is freed), from glibc's mallinfo2."""
    import ctypes

    class Info(ctypes.Structure):
        fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        _fields_ = [(n, ctypes.c_size_t) for n in (*fields, "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
    libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
    before = libc.mallinfo2()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    held = libc.mallinfo2()
    libc.free(block)
    return held.hblkhd - before.hblkhd, held.arena - libc.mallinfo2().arena


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc 2.33 and later
    except (OSError, TypeError):
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc's mallinfo2")
def test_a_sweep_worker_keeps_freed_memory_for_its_next_steps(project):
    """An activation-sized block comes from the worker's heap and stays there once freed,
    for the next training step, rather than being mapped, handed back to the kernel and
    paged in again, zeroed (zoo._malloc: the demo's CPU epochs 0.90–0.91× as long,
    benchmarks/bench_malloc.py)."""
    from zoo.sweep._local import worker_pool

    size = 24 << 20  # glibc's defaults map it and unmap it when freed
    with worker_pool(1) as pool:
        mapped, handed_back = pool.submit(_where_a_freed_block_went, size).result()
    assert mapped < size // 2 and handed_back < size // 2


def test_workers_take_the_environment_and_directory_their_sweep_has_now(
    project, tmp_path, monkeypatch
):
    """Workers are forked from a server that started earlier (with another environment
    and directory); each still sees its parent's current ones, as a spawned worker
    would, and is not a process the parent spawned itself."""
    import os

    from zoo.sweep._local import start_worker_server, worker_pool

    start_worker_server()
    later = tmp_path / "later"
    later.mkdir()
    monkeypatch.setenv("ZOO_WORKER_CHECK", "set after the server started")
    monkeypatch.chdir(later)
    with worker_pool(1) as pool:
        seen = pool.submit(os.getenv, "ZOO_WORKER_CHECK").result()
        directory = pool.submit(os.getcwd).result()
        parent = pool.submit(os.getppid).result()
    assert (seen, Path(directory)) == ("set after the server started", later)
    assert parent != os.getpid()


def _python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_module_in_the_working_directory_does_not_break_the_workers(tmp_path):
    """A project directory holding a ``torch.py`` (any name a worker imports) still gets
    workers: the server that forks them does not import from its working directory."""
    (tmp_path / "torch.py").write_text("raise RuntimeError('the project torch.py')\n")
    done = _python(
        """
        import os
        from zoo.sweep._local import worker_pool
        with worker_pool(1) as pool:
            print(pool.submit(os.getpid).result())
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_workers_run_the_zoo_their_parent_imported(tmp_path):
    """A sweep started with another checkout of zoo (or after an edit) trains with that
    code, not with what the workers' server found on its own path."""
    shutil.copytree(Path(zoo.__file__).parent, tmp_path / "zoo")
    done = _python(
        """
        import importlib.util, zoo
        from zoo.sweep._local import worker_pool
        with worker_pool(1) as pool:
            print(zoo.__file__, pool.submit(importlib.util.find_spec, "zoo").result().origin)
        """,
        tmp_path,
    )
    assert done.stdout.split() == [str(tmp_path / "zoo" / "__init__.py")] * 2, done.stderr


def test_the_worker_server_never_asks_cuda_for_devices(tmp_path):
    """A process that has asked CUDA for its devices forks children that cannot use a
    GPU; the server's imports ask nothing, so its workers can."""
    done = _python(
        """
        import torch
        asked = []
        torch._C._cuda_getDeviceCount = lambda: asked.append(1) or 0
        torch.cuda.is_available = lambda: asked.append(1) or False
        from zoo.sweep._local import WORKER_MODULES
        for name in WORKER_MODULES:
            __import__(name)
        print(len(asked), torch.cuda.is_initialized())
        """,
        tmp_path,
    )
    assert done.stdout.split() == ["0", "False"], done.stderr[-2000:]


def test_status_table_keeps_every_state_in_its_own_column():
    """`zoo sweep status` prints one column per state, headers and counts apart even
    where a header is as wide as a column (``interrupted``) or a count is large."""
    from zoo.sweep._status import STATES, format_status

    counts = {"pretrain": dict.fromkeys(STATES, 0), "run": dict.fromkeys(STATES, 0)}
    counts["run"].update(missing=7159, interrupted=1234567)
    _, header, *rows = format_status("defocus", counts).splitlines()
    assert header.split() == ["group", *STATES]
    for row, group in zip(rows, counts, strict=True):
        assert row.split() == [group, *(str(counts[group][s]) for s in STATES)]


def test_the_plan_makes_each_stored_dataset_in_one_job_the_jobs_loading_it_wait_for(
    tiny_spec, project, capsys
):
    """Dataset preparation is planned: one dataset job per stored dataset, keyed by its
    name and declaration (the same in every plan declaring it so), and every stage and
    run job names the dataset jobs it loads apart from the stage it starts from."""
    from conftest import tiny_spec_document

    plan = make_plan(load_spec(tiny_spec()))
    made = {j.name: j for j in plan.datasets}
    assert sorted(made) == ["a", "b", "c"] and plan.counts()["dataset_jobs"] == 3
    assert all(j.kind == "dataset" and not j.depends and not j.datasets for j in made.values())
    assert plan.counts()["jobs"] == {"stage": 2, "run": 4}
    stages = {j.key for j in plan.jobs if j.kind == "stage"}
    for job in plan.jobs:
        assert set(job.datasets) == {made[n].key for n in job.config.used_datasets}
        assert set(job.depends) <= stages and (job.kind == "stage" or job.depends[-1] in stages)

    smaller = make_plan(load_spec(tiny_spec(sources=("a",), freezes=("none",))))
    assert {j.name: j.key for j in smaller.datasets} == {n: j.key for n, j in made.items()}
    document = tiny_spec_document()
    document["base"]["datasets"]["a"]["defocus_nm"] = -20
    (project.root / "other.yaml").write_text(yaml.safe_dump(document))
    other = {j.name: j.key for j in make_plan(load_spec(project.root / "other.yaml")).datasets}
    assert other["a"] != made["a"].key and other["b"] == made["b"].key

    mixed = make_plan(load_spec(Path(zoo.__file__).parent.parent / "sweeps" / "baseline.yaml"))
    assert "mix" not in {j.name for j in mixed.datasets}  # a mixture is cut from its parts
    parts = {j.name: j.key for j in mixed.datasets}
    run = mixed.jobs[-1]
    assert set(run.config.datasets["mix"]["mix"]) < set(run.config.used_datasets)
    assert set(run.datasets) == {parts[n] for n in run.config.used_datasets if n != "mix"}
    assert main(["sweep", "plan", str(tiny_spec())]) == 0
    assert "  dataset jobs: 3 (stored datasets" in capsys.readouterr().out


def test_a_dataset_job_that_fails_skips_only_the_jobs_loading_it(project, capsys):
    """The local executor runs dataset jobs like the others: one that fails (an unreadable
    image) leaves the runs that load it skipped, and the sweep goes on."""
    from conftest import TINY_DATA

    (project.root / "broken" / "images").mkdir(parents=True)
    (project.root / "broken" / "masks").mkdir()
    (project.root / "broken" / "images" / "im0.png").write_bytes(b"not a png")
    spec = project.root / "broken.yaml"
    base = {
        "model": {"encoder": "tu-test_resnet", "decoder_channels": [16] * 5},
        "datasets": {"a": {**TINY_DATA, "defocus_nm": -10}, "d": {"path": "broken"}},
        "stages": [{"name": "pretrain", "train": "a", "size": 8, "epochs": 1}],
        "validate_on": ["a"],
    }
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "broken",
                "base": base,
                "axes": [{"product": {"source": ["a", "d"]}}],
                "set": {"stages.0.train": "$source", "validate_on": ["$source"]},
                "seeds": [0],
            }
        )
    )
    assert main(["sweep", "run", str(spec), "--workers", "1"]) == 1  # one run skipped
    out = capsys.readouterr().out
    assert "making 2 dataset(s): a, d" in out and re.search(r"\n  dataset a: [0-9a-f]{16}\n", out)
    assert re.search(r"\n  dataset d: failed: .*im0\.png: unreadable", out)
    assert "finished 1, already finished 0, failed 0, skipped 1" in out


def test_a_dataset_job_travels_as_json_and_both_backends_make_it_through_run_job(
    tiny_spec, project, tmp_path, capsys
):
    """A dataset job is made by run_job from its JSON description: in a SLURM dataset
    array task as in a local worker; once the cache has it, it is left out."""
    from zoo.sweep import Job, jobs_from_plan
    from zoo.sweep._datasets import to_make
    from zoo.sweep._slurm_task import worker

    plan = make_plan(load_spec(tiny_spec(sources=("a",), freezes=("none",))))
    jobs = jobs_from_plan(plan, project.tracking_uri, project)
    todo, done = to_make(jobs)
    assert [j.name for j in todo] == ["a", "b", "c"] and not done
    made = todo[0]
    assert Job.from_json(made.to_json()) == made and not made.tags
    array = {"name": "datasets-0", "kind": "datasets", "keys": [made.key], "tasks": [[made.key]]}
    record = {"arrays": [array], "jobs": {}, "datasets": {made.key: made.to_json()}}
    (tmp_path / "runs.json").write_text(json.dumps(record))
    assert worker(tmp_path, "datasets-0", 0) == 0
    digest = json.loads(project.dataset_index.read_text())["a"]["digest"]
    assert f"dataset a: {digest}\n" in capsys.readouterr().out
    todo, done = to_make(jobs)
    assert [j.name for j in todo] == ["b", "c"] and done == {made.key}
