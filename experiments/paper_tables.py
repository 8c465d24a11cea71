"""The paper's Tables 2 and 3 as published (accuracy in %, mean +- sd over 10 seeds).

These are *quoted* figures: rows of methods this project does not implement (EWC, SI, MAS, LwF,
DGR, iCaRL, DEN) are only ever shown as the paper's numbers, never as measurements.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One row of a paper table.

    Attributes:
      strategy: the paper's strategy group (Regularization, Rehearsal, Architectural) or
        "Bound" for the dense baselines the paper does not report.
      name: the method as the paper names it.
      method: this project's ``--method`` for the row, or None if it is not implemented here.
      mean, std: the paper's accuracy in %, or None if the paper has no figure.
    """

    strategy: str
    name: str
    method: str | None
    mean: float | None
    std: float | None


@dataclasses.dataclass(frozen=True)
class PaperTable:
    number: int
    benchmark: str
    experiment: str  # the experiments module that runs one row
    dataset: str
    rows: tuple[PaperRow, ...]
    #: The authors' own implementation run on this project's machines (see
    #: ``../shared/paper/reference-results.md``): method -> (mean %, sd %, seeds).
    authors_code: dict[str, tuple[float, float, str]]


_BOUNDS = (
    PaperRow("Bound", "Fine-tuning (dense, lower bound)", "finetune", None, None),
    PaperRow("Bound", "Joint training (dense, upper bound)", "joint", None, None),
)

TABLES: dict[int, PaperTable] = {
    2: PaperTable(
        number=2,
        benchmark="split_mnist",
        experiment="experiments.split_mnist",
        dataset="mnist",
        rows=(
            PaperRow("Regularization", "EWC", None, 20.01, 0.06),
            PaperRow("Regularization", "SI", None, 19.99, 0.06),
            PaperRow("Regularization", "MAS", None, 19.52, 0.29),
            PaperRow("Regularization", "LwF", None, 23.85, 0.44),
            PaperRow("Rehearsal", "DGR", None, 90.79, 0.41),
            PaperRow("Rehearsal", "iCaRL", None, 94.57, 0.11),
            PaperRow("Rehearsal", "SpaceNet-Rehearsal", "rehearsal", 95.08, 0.15),
            PaperRow("Architectural", "DEN", None, 56.95, 0.02),
            PaperRow("Architectural", "Static-SparseNN", "static", 61.25, 2.30),
            PaperRow("Architectural", "SpaceNet", "spacenet", 75.53, 1.82),
            *_BOUNDS,
        ),
        authors_code={"spacenet": (69.64, 1.72, "0-9")},
    ),
    3: PaperTable(
        number=3,
        benchmark="split_fashion_mnist",
        experiment="experiments.split_fashion_mnist",
        dataset="fashion_mnist",
        rows=(
            PaperRow("Regularization", "EWC", None, 19.47, 0.98),
            PaperRow("Regularization", "SI", None, 19.93, 0.01),
            PaperRow("Regularization", "LwF", None, 20.76, 1.65),
            PaperRow("Rehearsal", "DGR", None, 73.58, 3.90),
            PaperRow("Rehearsal", "iCaRL", None, 80.70, 1.29),
            PaperRow("Rehearsal", "SpaceNet-Rehearsal", "rehearsal", 84.18, 0.24),
            PaperRow("Architectural", "DEN", None, 31.51, 0.04),
            PaperRow("Architectural", "Static-SparseNN", "static", 56.80, 2.30),
            PaperRow("Architectural", "SpaceNet", "spacenet", 64.83, 0.69),
            *_BOUNDS,
        ),
        authors_code={},
    ),
}
