"""The Colab TPU notebook (notebooks/spacenet_colab_tpu.ipynb), executed top to bottom.

The committed notebook must have no outputs. Executed with nbclient on the CPU in its quick
mode (2 seeds, 1 epoch per task, the offline MNIST files in ../shared/datasets), in a kernel of
this very Python, twice over the same folders: the first run trains both seeds as one vmapped
program and checkpoints every task; the second resumes and retrains nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "spacenet_colab_tpu.ipynb"
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SEEDS = 2  # the notebook's quick mode

nbformat = pytest.importorskip("nbformat")


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_committed_notebook_is_valid_and_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    cells = _code_cells(nb)
    for cell in cells:
        assert cell.outputs == [], f"outputs left in a cell: {cell.source[:80]!r}"
        assert cell.execution_count is None, f"execution count left: {cell.source[:80]!r}"
    assert "parameters" in cells[0].metadata.get("tags", []), "first code cell is not tagged"
    # Every code cell is introduced by Markdown.
    for before, cell in zip(nb.cells, nb.cells[1:], strict=False):
        if cell.cell_type == "code":
            assert before.cell_type == "markdown", f"no Markdown before {cell.source[:80]!r}"


def _execute(workdir: Path) -> str:
    """Run the notebook once in a fresh kernel of sys.executable; return all its text output."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # A kernelspec of our own, so the kernel is this interpreter whatever is installed elsewhere.
    spec = workdir / "kernels" / "spacenet-test"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "spacenet-jax test", "language": "python",
    }))
    km = KernelManager(kernel_name="spacenet-test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, km=km, timeout=300, resources={"metadata": {"path": str(ROOT)}},  # cwd: repo root
    )
    client.execute()  # raises CellExecutionError if a cell fails
    assert all(cell.execution_count is not None for cell in _code_cells(nb)), "not finished"
    text = []
    for cell in _code_cells(nb):
        for output in cell.outputs:
            if output.output_type == "stream":
                text.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                if "image/png" in output.data:
                    text.append("<image/png>")
                else:
                    text.append(output.data.get("text/markdown", output.data.get("text/plain", "")))
            elif output.output_type == "error":
                text.append("\n".join(output.traceback))
    return "".join(text)


def _checkpoint_steps(ck: Path) -> dict[str, float]:
    """Every committed checkpoint step folder and its modification time."""
    return {str(p.relative_to(ck)): p.stat().st_mtime_ns for p in ck.glob("seed_*/*")
            if p.name.isdigit()}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "mnist").is_dir(), reason="../shared/datasets absent")
def test_notebook_runs_in_quick_mode_and_resumes(tmp_path, monkeypatch, shared_cache):
    run_dir, ck = tmp_path / "run", tmp_path / "checkpoints"
    for key, value in {
        "SPACENET_NOTEBOOK_QUICK": "1",
        "SPACENET_DATA_DIR": str(SHARED_DATASETS),
        "SPACENET_NOTEBOOK_RUN_DIR": str(run_dir),
        "SPACENET_NOTEBOOK_CHECKPOINT_DIR": str(ck),
        "SPACENET_CACHE_DIR": str(shared_cache),
        "JAX_PLATFORMS": "cpu",
    }.items():
        monkeypatch.setenv(key, value)  # the kernel and the experiment's process inherit them
    monkeypatch.delenv("SPACENET_TEST_KILL_AFTER_TASK", raising=False)

    first = _execute(tmp_path)
    assert "spacenet_jax is already importable" in first and "skipping the install" in first
    assert "accelerator: CPU (cpu backend)" in first
    assert "a fresh run of 2 seed(s)" in first and "--resume" not in first
    assert "epoch 1/1" in first  # the experiment's progress, streamed into the notebook
    results = json.loads((run_dir / "results.json").read_text())
    runs = results["runs"]
    assert [r["seed"] for r in runs] == list(range(SEEDS))
    assert all(r["batch"] == list(range(SEEDS)) for r in runs)  # one vmapped program
    assert all(r["config"]["epochs"] == 1 and r["tasks_learned"] == 5 for r in runs)
    assert results["summary"]["final_avg_acc"]["n"] == SEEDS
    assert "mean ± sd (2)" in first and "final average accuracy:" in first
    assert (run_dir / "final_task_accuracy.png").is_file()
    steps = _checkpoint_steps(ck)
    assert sorted(steps) == sorted(f"seed_{s}/{t}" for s in range(SEEDS) for t in range(1, 6))
    assert "checkpoints after tasks [1, 2, 3, 4, 5]" in first
    if importlib.util.find_spec("experiments.figures") is not None:
        figures = list((run_dir / "figures").glob("*.png"))
        report = (run_dir / "report.md").read_text()
        assert figures and report.splitlines()[0] in first  # the report is shown
        assert first.count("<image/png>") == 1 + len(figures)  # Figure 3, then every figure
    else:
        assert "no experiments.figures module" in first and "step skipped" in first

    second = _execute(tmp_path)
    assert "resuming with --resume" in second and "--resume" in second
    for seed in range(SEEDS):
        assert f"seed {seed}] already in {run_dir / 'results.json'}, skipped" in second
    assert "epoch 1/1" not in second and "resuming from" not in second  # nothing retrained
    assert json.loads((run_dir / "results.json").read_text())["runs"] == runs
    assert _checkpoint_steps(ck) == steps  # no checkpoint written again
