"""ShiftEvaluator's report on real logits: two logistic-regression models fitted on a long-tailed
subset of Fashion-MNIST (plain, and class-balanced = prior-free logits like Balanced Softmax),
scored on the full official test split; numbers checked against NumPy references in this file."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lade_tf.priors import SHIFT_NAMES, subsample_by_counts
from pipeline import shift_evaluator as se

# Long-tailed counts with every shot group present: 600 ... 6 (> 100, 20..100, < 20 images).
TRAIN_COUNTS = [int(600 * 0.01 ** (k / 9)) for k in range(10)]


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


@pytest.fixture(scope="module")
def real_logits(fashion_mnist_dir: Path):
    """{"ce": logits, "balanced_softmax": logits} [10000, 10] on the test split, and its labels."""
    from sklearn.linear_model import LogisticRegression

    def load(prefix: str):
        images = _read_idx(fashion_mnist_dir / f"{prefix}-images-idx3-ubyte.gz", 16)
        labels = _read_idx(fashion_mnist_dir / f"{prefix}-labels-idx1-ubyte.gz", 8)
        # 2x2 average pooling keeps the fit fast (196 features) on a 2-core machine.
        images = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196) / 255.0
        return images, labels.astype(np.int64)

    train_x, train_y = load("train")
    test_x, test_y = load("t10k")
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(train_y == c), n, replace=False)
                           for c, n in enumerate(TRAIN_COUNTS)])
    logits = {}
    for loss, weight in (("ce", None), ("balanced_softmax", "balanced")):
        model = LogisticRegression(max_iter=300, class_weight=weight)
        model.fit(train_x[keep], train_y[keep])
        logits[loss] = model.decision_function(test_x)
    return logits, test_y


@pytest.fixture(scope="module")
def report(real_logits):
    logits, labels = real_logits
    return se.compute_shift_report(logits, labels, {loss: TRAIN_COUNTS for loss in logits})


def _accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def test_report_has_the_issue_schema(report):
    assert set(report) == {"distributions", "methods", "uniform"}
    assert report["distributions"] == list(SHIFT_NAMES) and len(SHIFT_NAMES) == 11
    names = ["Softmax", "PC Softmax", "PC Softmax + EM", "Balanced Softmax",
             "Balanced Softmax + EM"]
    assert list(report["methods"]) == names and list(report["uniform"]) == names
    for by_dist in report["methods"].values():
        assert list(by_dist) == list(SHIFT_NAMES)
        for cell in by_dist.values():
            assert set(cell) == {"mean", "std"}
            assert 0 <= cell["mean"] <= 1 and 0 <= cell["std"] < 0.1
    for metrics in report["uniform"].values():
        assert list(metrics) == list(se.UNIFORM_KEYS)
        assert all(math.isfinite(value) for value in metrics.values())


def test_uniform_accuracies_match_numpy(report, real_logits):
    logits, labels = real_logits
    log_prior = np.log(np.asarray(TRAIN_COUNTS) / sum(TRAIN_COUNTS))
    methods = report["methods"]
    assert methods["Softmax"]["U"]["mean"] == pytest.approx(_accuracy(labels, logits["ce"]))
    assert methods["PC Softmax"]["U"]["mean"] == pytest.approx(
        _accuracy(labels, logits["ce"] - log_prior))
    assert methods["Balanced Softmax"]["U"]["mean"] == pytest.approx(
        _accuracy(labels, logits["balanced_softmax"]))
    assert methods["PC Softmax"]["U"]["std"] == pytest.approx(0.0, abs=1e-12)  # U keeps all


def test_shifted_accuracy_matches_numpy(report, real_logits):
    """F50 and B50 of PC Softmax: subsample by rank, adjust by log p_t - log p_s, average seeds."""
    logits, labels = real_logits
    log_source = np.log(np.asarray(TRAIN_COUNTS) / sum(TRAIN_COUNTS))
    rank = np.argsort(np.argsort(-np.asarray(TRAIN_COUNTS), kind="stable"), kind="stable")
    for name, exponent in (("F50", rank / 9), ("B50", (9 - rank) / 9)):
        counts = np.floor(1000 * (1 / 50) ** exponent + 1e-9).astype(int)
        with np.errstate(divide="ignore"):
            log_target = np.log(counts / counts.sum())
        scores = []
        for seed in (0, 1, 2):
            kept = subsample_by_counts(labels, counts, seed)
            assert np.array_equal(np.bincount(labels[kept], minlength=10), counts)
            scores.append(_accuracy(labels[kept], logits["ce"][kept] - log_source + log_target))
        cell = report["methods"]["PC Softmax"][name]
        assert cell["mean"] == pytest.approx(np.mean(scores))
        assert cell["std"] == pytest.approx(np.std(scores))


def test_shot_groups_match_numpy(report, real_logits):
    logits, labels = real_logits
    log_source = np.log(np.asarray(TRAIN_COUNTS) / sum(TRAIN_COUNTS))
    predicted = np.argmax(logits["ce"] - log_source, axis=1)
    per_class = np.array([np.mean(predicted[labels == c] == c) for c in range(10)])
    counts = np.asarray(TRAIN_COUNTS)
    uniform = report["uniform"]["PC Softmax"]
    assert uniform["many"] == pytest.approx(per_class[counts > 100].mean())
    assert uniform["medium"] == pytest.approx(per_class[(counts >= 20) & (counts <= 100)].mean())
    assert uniform["few"] == pytest.approx(per_class[counts < 20].mean())
    probs = np.exp(logits["ce"] - logits["ce"].max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert report["uniform"]["Softmax"]["nll"] == pytest.approx(
        -np.mean(np.log(probs[np.arange(len(labels)), labels])))


def test_prior_correction_helps_where_the_paper_says(report):
    """Softmax is best when test is as skewed as training, PC Softmax on uniform and reversed."""
    methods = report["methods"]
    assert methods["PC Softmax"]["U"]["mean"] > methods["Softmax"]["U"]["mean"] + 0.02
    assert methods["PC Softmax"]["B50"]["mean"] > methods["Softmax"]["B50"]["mean"] + 0.1
    assert methods["PC Softmax"]["F50"]["mean"] > methods["PC Softmax"]["B50"]["mean"]
    # EM recovers most of the known-prior gain on the reversed (backward) sets.
    assert methods["PC Softmax + EM"]["B50"]["mean"] > methods["Softmax"]["B50"]["mean"] + 0.05


def test_written_report_files(report, tmp_path: Path):
    paths = se.write_report(report, tmp_path, notes=["a note"])
    assert sorted(Path(p).name for p in paths.values()) == sorted(se.REPORT_FILES)

    def reject_constant(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    written = json.loads(Path(paths[se.REPORT_JSON]).read_text(), parse_constant=reject_constant)
    assert written == json.loads(json.dumps(report))

    markdown = Path(paths[se.REPORT_MARKDOWN]).read_text()
    assert "a note" in markdown
    for name in list(report["methods"]) + list(SHIFT_NAMES):
        assert f" {name} |" in markdown
    pc_f50 = report["methods"]["PC Softmax"]["F50"]
    assert f"{100 * pc_f50['mean']:.1f} ± {100 * pc_f50['std']:.1f}" in markdown

    png = Path(paths[se.REPORT_PLOT]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 600 and height >= 400 and len(png) > 20_000


def test_empty_shot_group_is_null_in_json_and_na_in_markdown(real_logits, tmp_path: Path):
    """Fashion-MNIST-LT IR 100 has no class under 20 images: `few` has no value, not a fake one."""
    logits, labels = real_logits
    counts = [5980, 3584, 2147, 1287, 771, 462, 277, 166, 99, 59]
    report = se.compute_shift_report({"ce": logits["ce"]}, labels, {"ce": counts}, seeds=(0, 1, 2))
    assert math.isnan(report["uniform"]["PC Softmax"]["few"])
    paths = se.write_report(report, tmp_path)
    written = json.loads(Path(paths[se.REPORT_JSON]).read_text())
    assert written["uniform"]["PC Softmax"]["few"] is None
    assert math.isfinite(written["uniform"]["PC Softmax"]["medium"])
    assert "n/a" in Path(paths[se.REPORT_MARKDOWN]).read_text()


def test_methods_and_errors():
    assert [m.name for m in se.methods_for(["lade", "logit_adjusted"])] == [
        "LADE", "LADE + EM", "Logit Adjusted", "Logit Adjusted + EM"]
    with pytest.raises(ValueError, match="hinge"):
        se.methods_for(["hinge"])
    logits = np.zeros((20, 10))
    labels = np.arange(20) % 10
    with pytest.raises(ValueError, match=r"no train counts .*'lade'"):
        se.compute_shift_report({"lade": logits}, labels, {"ce": TRAIN_COUNTS})
    with pytest.raises(ValueError, match="seeds is empty"):
        se.compute_shift_report({"ce": logits}, labels, {"ce": TRAIN_COUNTS}, seeds=())
