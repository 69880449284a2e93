"""`python -m pipeline.tune`: KerasTuner search of LADE's alpha on a prepared examples directory.

The search itself lives in `pipeline.tuner` (shared with the TFX Tuner's `tuner_fn`).
"""

from pipeline.tuner import main

if __name__ == "__main__":
    main()
