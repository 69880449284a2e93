"""What `benchmarks/accuracy.py` trains and scores: data sets, trainings, methods and budgets.

A method is a training run plus an inference rule (see `METHODS`); a budget says how long each
run trains and which data sets, methods and training seeds it runs by default. Plain data, no
TensorFlow: the measuring script (`accuracy.py`) and the report (`accuracy_report.py`) both read
it.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

FIGURE2_ALPHAS = (0.0, 0.1, 0.5, 1.0, 2.0)
SMOKE_FIGURE2_ALPHAS = (0.0, 1.0)
#: Subsampling seeds of every shifted test distribution.
EVAL_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A long-tailed training split made by `pipeline.prepare`, and the model trained on it."""

    source: str  # "cifar10" (the shared tarball) or "fashion_mnist"
    imbalance_ratio: int
    arch: str


DATASETS = {
    "cifar10_lt_ir100": Dataset("cifar10", 100, "resnet32_bbn"),
    "cifar10_lt_ir50": Dataset("cifar10", 50, "resnet32_bbn"),
    "cifar10_lt_ir10": Dataset("cifar10", 10, "resnet32_bbn"),
    "fmnist_lt_ir100": Dataset("fashion_mnist", 100, "small_cnn"),
}

#: Training runs: loss and its options. Methods are a training run plus an inference rule.
TRAININGS = {
    "ce": {"loss": "ce"},
    "balanced_softmax": {"loss": "balanced_softmax"},
    "lade_sample": {"loss": "lade", "importance": "sample"},
    "lade_class": {"loss": "lade", "importance": "class"},
}
# No separate logit-adjusted (tau 1) training: `logit_adjusted_loss(tau=1)` and
# `balanced_softmax_loss` compute the same CE(f + log p_s) (tests/benchmarks checks it), and both
# predict with f + log p_t, so a second training would repeat the first step for step.


@dataclasses.dataclass(frozen=True)
class Method:
    """How one row of the table predicts: which training run, which rule."""

    label: str
    training: str
    rule: str  # "raw", "known_prior" or "posthoc_uniform"


METHODS = {
    "softmax": Method("Softmax (CE)", "ce", "raw"),
    "pc_softmax": Method("PC Softmax (CE + known p_t)", "ce", "known_prior"),
    "posthoc_la": Method("Post-hoc logit adjustment (CE, tau 1)", "ce", "posthoc_uniform"),
    "lade_class": Method("LADE, importance=class (+ known p_t)", "lade_class", "known_prior"),
    "lade_sample": Method("LADE, importance=sample (+ known p_t)", "lade_sample", "known_prior"),
    "balanced_softmax": Method(
        "Balanced Softmax = logit-adjusted loss, tau 1 (+ known p_t)",
        "balanced_softmax",
        "known_prior",
    ),
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Epochs, recipe and the parts a budget runs by default."""

    epochs: int
    batch_size: int
    learning_rate: float
    schedule: str
    warmup_epochs: float
    max_train_examples: int | None
    plan: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]]  # dataset -> (methods, seeds)
    figure2_dataset: str
    figure2_epochs: int
    #: Datasets trained for other than `epochs` (Fashion-MNIST-LT on the CPU budget).
    dataset_epochs: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: Score on the first this many test images (file order, classes mixed); None: all.
    max_test_examples: int | None = None

    def epochs_for(self, dataset_name: str) -> int:
        """Training epochs on one dataset."""
        return self.dataset_epochs.get(dataset_name, self.epochs)

    def warmup_for(self, epochs: int) -> float:
        """Warm-up epochs of a run of `epochs`: the budget's, at most a quarter of the run."""
        return min(self.warmup_epochs, epochs / 4)


_ALL = tuple(METHODS)
BUDGETS = {
    # CI's: every method and the Figure 2 check end to end, in minutes. Predicting the whole
    # test set would cost each run several times its training.
    "smoke": Budget(
        2,
        64,
        0.05,
        "cosine",
        1.0,
        512,
        {"cifar10_lt_ir100": (_ALL, (0,))},
        "cifar10_lt_ir100",
        2,
        max_test_examples=2000,
    ),
    "cpu": Budget(
        30,
        128,
        0.1,
        "cosine",
        5.0,
        None,
        {
            "cifar10_lt_ir100": (_ALL, (0,)),
            "fmnist_lt_ir100": (("softmax", "pc_softmax", "lade_class"), (0, 1, 2)),
        },
        "fmnist_lt_ir100",
        5,
        # 10 epochs of the small CNN: a 30-epoch run costs far more time and the 6-epoch
        # default pipeline run is already close to its numbers (README, Results).
        {"fmnist_lt_ir100": 10},
    ),
    "gpu": Budget(
        200,
        256,
        0.2,
        "step",
        5.0,
        None,
        {
            "cifar10_lt_ir100": (_ALL, (0,)),
            "cifar10_lt_ir50": (_ALL, (0,)),
            "cifar10_lt_ir10": (_ALL, (0,)),
        },
        "cifar10_lt_ir100",
        200,
    ),
}


def figure2_alphas(budget_name: str) -> tuple[float, ...]:
    """The LADE alphas of a budget's Figure 2 check."""
    return SMOKE_FIGURE2_ALPHAS if budget_name == "smoke" else FIGURE2_ALPHAS


def default_val_per_class() -> int:
    """`pipeline.prepare`'s default number of balanced validation images per class."""
    from pipeline.split_plan import PrepareConfig

    return PrepareConfig().val_per_class
