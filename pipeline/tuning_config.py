"""`TuningConfig`: what the KerasTuner search over LADE's alpha does, checked where it is made.

The search algorithms, the searched range and every option's default are decided here, once;
the Tuner module file (`pipeline.tuner`), the command lines (`pipeline/flags.py`) and the
pipeline read them. Plain Python: no keras_tuner, TensorFlow or TFX import.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

#: KerasTuner algorithms: random search, Bayesian optimisation, Hyperband.
TUNERS = ("random", "bayesian", "hyperband")
#: alpha (and lambda with `tune_lambda`) are searched log-uniformly in this range.
TUNED_RANGE = (0.01, 1.0)
#: The objective each trial reports: mean accuracy over the 11 shifted versions of the val split.
OBJECTIVE = "val_shift_accuracy"
#: Its standard error over the val images (see `pipeline.tuner.shift_objective`).
OBJECTIVE_STANDARD_ERROR = "val_shift_accuracy_se"


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """The search's options; JSON-safe through `to_dict` / `from_dict`.

    Args:
        tuner: one of TUNERS.
        max_trials: trials of random search and Bayesian optimisation (Hyperband sets its own).
        tune_lambda: also search LADE's lambda (`remine_lambda`).
        trial_epochs: epochs per trial (Hyperband's maximum); None: the TrainConfig's epochs.
        results_dir: where trials.json / trials.md / trials.png go; None: KerasTuner's project
            directory (the TFX Tuner component sets its own output artifact).
    """

    tuner: str = "random"
    max_trials: int = 8
    tune_lambda: bool = False
    trial_epochs: int | None = None
    results_dir: str | None = None

    def __post_init__(self) -> None:
        if self.tuner not in TUNERS:
            raise ValueError(f"tuner = {self.tuner!r}: expected one of {TUNERS}")
        for name in ("max_trials", "trial_epochs"):
            value = getattr(self, name)
            if value is None and name == "trial_epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: expected an integer >= 1")
        if not isinstance(self.tune_lambda, bool):
            raise ValueError(f"tune_lambda = {self.tune_lambda!r}: expected true or false")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-safe dict (field name -> value)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TuningConfig:
        """A config from `to_dict` output (or any subset; None values keep the defaults).

        Raises:
            ValueError: for unknown keys (named in the message) or invalid values.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown Tuner option(s) {unknown}: expected {sorted(fields)}")
        return cls(**{k: v for k, v in values.items() if v is not None})


#: The defaults, for help texts and flags.
DEFAULT_TUNING = TuningConfig()
