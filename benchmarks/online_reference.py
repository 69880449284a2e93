"""`lade_tf.prior_tracking` against the authors' code of Baby et al. 2023
(acmi-lab/OnlineLabelShift): FLH-FTL, ROGD, their soft-BBSE local estimate and UOGD fed the same
probabilities, reference data and streams, step by step.

Not part of the test suite: CI has neither torch nor the authors' code. It runs in a throwaway
environment outside the repository, with the authors' repository unpacked beside it (their
`utils/model_utils.py` imports torch, scipy, scikit-learn, tqdm, transformers, torchvision, PIL and,
through `utils/label_shift_utils.py`, cvxpy; nothing is stubbed):

    python3.11 -m venv /tmp/ols-venv
    /tmp/ols-venv/bin/pip install torch==2.13.0
    /tmp/ols-venv/bin/pip install cvxpy tqdm scipy scikit-learn transformers torchvision \
        pillow pandas
    mkdir /tmp/ols
    git --git-dir=<clone of acmi-lab/OnlineLabelShift> archive HEAD | tar -x -C /tmp/ols
    /tmp/ols-venv/bin/python benchmarks/online_reference.py --authors-repo /tmp/ols

Data: scikit-learn's digits with a logistic regression trained on a long-tailed half (so the
training prior p_s is far from the balanced reference split's): its probabilities are the
posteriors both sides see, its pixels the features and its coefficients the last linear layer of
UOGD. Streams: the authors' own shifts (`lsu.get_shifts`: monotone, square, sinusoidal, Bernoulli
between uniform and one class, their default) sampled by their `lsu.get_shifted_dataloaders`
(seeded), 1, 10 and 100 images a step. Their literal formulas divide by the training prior where
this library divides by the reference labels' distribution (identical in their setting), so the
library side gets `reference_prior=p_s` / `weight_prior=p_s` here; FLH-FTL, the local estimates and
ROGD run with torch's float64 default, UOGD in float32 as the authors hard-code it.

Reports the largest absolute difference over every step and class of: the local estimates, the
prior FLH-FTL predicts each step with, ROGD's prior (learning rate given: their Lipschitz
estimate draws from NumPy's global generator), UOGD's kernel after each step and its logits on
the step's images, and the share of equal UOGD predictions. Writes
benchmarks/results/online_reference.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import harness
import numpy as np

from lade_tf import prior_tracking as pt

SHIFTS = ("monotone", "square", "sinusoidal", "bernouli")
SIZES = (1, 10, 100)
REFERENCE_PER_CLASS = 30

log = harness.progress_logger("online_reference")


def digits_model(seed: int = 0) -> dict[str, Any]:
    """Logistic regression on a long-tailed half of digits (class c keeps 0.75^c of its images):
    p_s, and features / posteriors / labels of a balanced reference split and of the stream
    pool (every other image: an equality check, not an accuracy, so the pool may hold training
    images, and it holds enough of one class for 100-image steps of the one-class prior)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    bunch = load_digits()
    features, labels = bunch.data / 16.0, bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    train, reference, pool = [], [], []
    for c in range(10):
        members = order[labels[order] == c]  # the first REFERENCE_PER_CLASS: reference
        reference += list(members[:REFERENCE_PER_CLASS])
        rest = members[REFERENCE_PER_CLASS:]
        half = len(rest) // 2
        train += list(rest[: max(8, int(half * 0.75**c))])
        pool += list(rest)
    train, reference, pool = (np.sort(np.asarray(s)) for s in (train, reference, pool))
    model = LogisticRegression(max_iter=2000).fit(features[train], labels[train])
    return dict(
        source=np.bincount(labels[train], minlength=10) / len(train),
        kernel=model.coef_.T.copy(),
        bias=model.intercept_.copy(),
        reference=(
            features[reference],
            model.predict_proba(features[reference]),
            labels[reference],
        ),
        pool=(features[pool], model.predict_proba(features[pool]), labels[pool]),
    )


def authors_modules(repo: Path):
    """The authors' `utils.model_utils` and `utils.label_shift_utils` (imported from `repo`)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path.insert(0, str(repo))
    import utils.label_shift_utils as lsu
    import utils.model_utils as modu

    return modu, lsu


def adapters(modu, root: str, num_features: int):
    """Their model classes fed fixed numbers: every input row is [features, log posteriors]."""
    import torch
    from torch import nn

    class FixedPosteriors(modu.BaseModelNN):
        """Their BaseModelNN whose softmax(forward(x)) is the given posteriors."""

        def __init__(self):
            super().__init__(root, "fixed_posteriors")

        def forward(self, x):
            return x[:, num_features:]

    class Features(nn.Module):
        """Their feature extractor: the features part of a row, in the layer's dtype."""

        def forward(self, x):
            return x[:, :num_features].to(torch.get_default_dtype())

    return FixedPosteriors, Features


def stream_indices(lsu, labels: np.ndarray, shift: str, size: int, steps: int, seed: int):
    """Indices of every step's images by the authors' shift and sampler (NumPy's global seed)."""
    import torch

    uniform, one_class = np.full(10, 0.1), np.eye(10)[0]
    shifts = lsu.get_shifts(shift, marg1=uniform, marg2=one_class, total_time=steps)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return [
        np.asarray(lsu.sample_idc_wo_replacement(labels, size, p, num_labels=10), np.int64)
        for p in shifts
    ]


def tensor_loader(rows: np.ndarray, labels: np.ndarray, dtype):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.tensor(rows, dtype=dtype), torch.tensor(labels))
    return DataLoader(data, batch_size=200, shuffle=False)


def authors_stream(lsu, data: dict[str, Any], shift: str, size: int, steps: int, seed: int):
    """One stream as both sides see it: the authors' loaders of rows [features, log p] (float64:
    the posteriors, and so BBSE, stay float64; UOGD's layer casts its features) and the same
    posteriors as arrays, softmax(log p) as their model computes them."""
    import torch

    ref_x, ref_p, ref_y = data["reference"]
    pool_x, pool_p, pool_y = data["pool"]
    rows_ref = np.hstack([ref_x, np.log(ref_p)])
    rows_pool = np.hstack([pool_x, np.log(pool_p)])
    indices = stream_indices(lsu, pool_y, shift, size, steps, seed)
    return {
        "indices": indices,
        "rows_ref": rows_ref,
        "rows_pool": rows_pool,
        "loaders": [tensor_loader(rows_pool[i], pool_y[i], torch.float64) for i in indices],
        "ref_loader": tensor_loader(rows_ref, ref_y, torch.float64),
        "posteriors": [torch.softmax(torch.tensor(np.log(pool_p[i])), 1).numpy() for i in indices],
        "ref_probs": torch.softmax(torch.tensor(np.log(ref_p)), dim=1).numpy(),
    }


def compare_estimators(
    modu, data: dict[str, Any], stream: dict[str, Any], steps: int, seed: int, root: str
) -> dict[str, Any]:
    """The local soft BBSE, FLH-FTL (the authors' delay) and ROGD, in float64."""
    import torch

    torch.set_default_dtype(torch.float64)
    ref_x, _, ref_y = data["reference"]
    source = data["source"]
    FixedPosteriors, _ = adapters(modu, root, ref_x.shape[1])
    loaders, ref_loader = stream["loaders"], stream["ref_loader"]
    posteriors, ref_probs = stream["posteriors"], stream["ref_probs"]

    def bbse():
        return modu.BlackBoxShiftEstimator(
            model=FixedPosteriors(),
            source_train_marginals=source,
            num_labels=10,
            ref_dataloader=ref_loader,
        )

    ours_bbse = pt.SoftBBSE(ref_probs, ref_y, reference_prior=source)
    theirs_bbse = bbse()
    local_diff = max(
        np.abs(ours_bbse.estimate(b) - theirs_bbse.get_marginal_estimate(loader)).max()
        for b, loader in zip(posteriors, loaders)
    )

    def authors_run(estimator):
        classifier = modu.UnsupervisedReweightingClassifier(
            model=FixedPosteriors(),
            marginal_estimator=estimator,
            source_train_marginals=source,
            num_labels=10,
            use_current_marginal_estimate=False,
        )
        results = classifier.predict_online_label_shift(loaders)
        return np.asarray([np.asarray(e, np.float64) for e in results["est_label_marginals"]])

    theirs_flh = authors_run(
        modu.FollowLeadingHistoryFollowTheLeaderEstimator(
            source_train_marginals=source, underlying_estimator=bbse(), num_labels=10
        )
    )
    ours_flh = pt.follow(pt.FLHFTLTracker(ours_bbse, source), posteriors)

    def authors_rogd(lr: float) -> np.ndarray:
        return authors_run(
            modu.RegularOnlineGradientEstimator(
                source_train_marginals=source,
                underlying_estimator=bbse(),
                ref_labels=ref_y,
                ref_prob=torch.tensor(ref_probs),
                num_labels=10,
                lr=lr,
            )
        )

    tracker = pt.ROGDTracker(ours_bbse, source, ref_probs, ref_y, total_steps=steps, seed=seed)
    theirs_rogd = authors_rogd(tracker.lr)
    ours_rogd = pt.follow(tracker, posteriors)
    # A rate 30 times theirs drives the prior onto the simplex's faces (zero entries: the
    # projection's clipping and the gradient's skipped columns run too).
    large = pt.ROGDTracker(ours_bbse, source, ref_probs, ref_y, lr=30 * tracker.lr)
    theirs_large = authors_rogd(large.lr)
    ours_large = pt.follow(large, posteriors)
    return {
        "local_soft_bbse": float(local_diff),
        "flh_ftl": float(np.abs(ours_flh - theirs_flh).max()),
        "rogd": float(np.abs(ours_rogd - theirs_rogd).max()),
        "rogd_30x_lr": float(np.abs(ours_large - theirs_large).max()),
        "rogd_lr": tracker.lr,
        "rogd_30x_zero_entries": int((theirs_large < 1e-12).sum()),
        "flh_ftl_mean_l1_move": mean_move(theirs_flh),
        "rogd_mean_l1_move": mean_move(theirs_rogd),
        "rogd_30x_mean_l1_move": mean_move(theirs_large),
    }


def mean_move(priors: np.ndarray) -> float:
    """Mean L1 change of the prior from step to step (a comparison of priors that never move
    would prove little)."""
    return float(np.abs(np.diff(priors, axis=0)).sum(axis=1).mean())


def compare_uogd(
    modu, data: dict[str, Any], stream: dict[str, Any], steps: int, seed: int, root: str
) -> dict[str, Any]:
    """UOGD in the authors' float32: the kernel after every step, the logits each step is
    predicted with, and the predictions of their whole loop."""
    import torch

    torch.set_default_dtype(torch.float32)
    ref_x, _, ref_y = data["reference"]
    pool_x = data["pool"][0]
    source, kernel, bias = data["source"], data["kernel"], data["bias"]
    width = ref_x.shape[1]
    FixedPosteriors, Features = adapters(modu, root, width)
    indices, loaders, ref_loader = stream["indices"], stream["loaders"], stream["ref_loader"]
    posteriors, ref_probs = stream["posteriors"], stream["ref_probs"]
    rows_ref, rows_pool = stream["rows_ref"], stream["rows_pool"]

    def authors_uogd(lr):
        model = modu.BaseModelWithLinearWeight(
            pretrained=False,
            root_path=root,
            model_name="digits_linear",
            input_size=(width,),
            num_labels=10,
            feature_extractor=Features(),
            feature_dim=width,
        )
        with torch.no_grad():
            model.linear.weight.copy_(torch.tensor(kernel.T))
            model.linear.bias.copy_(torch.tensor(bias))
        local = modu.BlackBoxShiftEstimator(
            model=FixedPosteriors(),
            source_train_marginals=source,
            num_labels=10,
            ref_dataloader=ref_loader,
        )
        return modu.UnbiasedOnlineGradientDescentClassifier(
            model=model,
            ref_dataloader=ref_loader,
            num_labels=10,
            marginal_estimator=local,
            weight_name="linear.weight",
            source_train_marginals=source,
            use_current_marginal_estimate=False,
            lr=None if lr is None else torch.tensor(lr),
        )

    def ours_uogd(**learning_rate: Any) -> pt.UOGDClassifier:
        local = pt.SoftBBSE(ref_probs, ref_y, reference_prior=source)
        return pt.UOGDClassifier(
            local, kernel, bias, ref_x, ref_y, weight_prior=source, **learning_rate
        )

    ours = ours_uogd(total_steps=steps, seed=seed)
    lipschitz = 2 * ours.initial_norm / ours.lr / steps**0.5
    theirs = authors_uogd(None)
    theirs.model.weight_lipschitz_estimate = torch.tensor([lipschitz])
    theirs.compute_lr_from_total_time(total_time=steps)
    lr_diff = abs(float(theirs.lr.item()) - ours.lr) / ours.lr

    theirs = authors_uogd(ours.lr)
    with torch.no_grad():
        ref_features = theirs.model.feature_extractor(torch.tensor(rows_ref))
    ref_labels = torch.tensor(ref_y)
    kernel_diff = logit_diff = 0.0
    for b, loader, i in zip(posteriors, loaders, indices):
        with torch.no_grad():
            their_logits = theirs.model(torch.tensor(rows_pool[i])).double().numpy()
        logit_diff = max(logit_diff, np.abs(ours.logits(pool_x[i]) - their_logits).max())
        q_hat = theirs.marginal_estimator.get_marginal_estimate(loader)
        theirs.update_weight(q_hat, ref_features, ref_labels)
        ours.update(b)
        their_kernel = theirs.model.linear.weight.detach().double().numpy().T
        kernel_diff = max(kernel_diff, np.abs(ours.kernel - their_kernel).max())

    # Their whole loop (predict, then update) once more, for the predicted labels.
    results = authors_uogd(ours.lr).predict_online_label_shift(loaders)
    replay = ours_uogd(lr=ours.lr)
    same = total = 0
    for b, i, predicted in zip(posteriors, indices, results["pred_labels"]):
        same += int((replay.logits(pool_x[i]).argmax(1) == predicted).sum())
        total += len(i)
        replay.update(b)
    return {
        "uogd_kernel": float(kernel_diff),
        "uogd_logits": float(logit_diff),
        "uogd_same_predictions": same / total,
        "uogd_lr_relative": lr_diff,
        "uogd_lr": ours.lr,
        "uogd_kernel_relative_move": float(
            np.linalg.norm(ours.kernel - kernel) / ours.initial_norm
        ),
        "kernel_scale": float(np.abs(kernel).max()),
    }


def markdown(report: dict[str, Any]) -> list[str]:
    """The Markdown report: one row per stream, then the worst differences and how far the
    compared quantities moved."""
    rows = [
        [
            r["shift"],
            r["images_per_step"],
            f"{r['local_soft_bbse']:.1e}",
            f"{r['flh_ftl']:.1e}",
            f"{r['rogd']:.1e}",
            f"{r['rogd_30x_lr']:.1e} ({r['rogd_30x_zero_entries']})",
            f"{r['uogd_kernel']:.1e}",
            f"{r['uogd_logits']:.1e}",
            f"{100 * r['uogd_same_predictions']:.2f}",
        ]
        for r in report["runs"]
    ]
    headers = [
        "shift",
        "images / step",
        "local soft BBSE",
        "FLH-FTL prior",
        "ROGD prior",
        "ROGD prior, 30x rate (zero entries)",
        "UOGD kernel",
        "UOGD logits",
        "UOGD same predictions %",
    ]
    worst = report["worst"]
    moves = {
        key: float(np.mean([r[key] for r in report["runs"]]))
        for key in (
            "flh_ftl_mean_l1_move",
            "rogd_mean_l1_move",
            "rogd_30x_mean_l1_move",
            "uogd_kernel_relative_move",
        )
    }
    return [
        "# lade_tf.prior_tracking against the authors' code (acmi-lab/OnlineLabelShift)",
        "",
        f"Authors' commit {report['authors_commit']}; {report['steps']} steps per stream "
        "(their shifts between uniform and class 0, sampled by their sampler, seed "
        f"{report['seed']}); digits, logistic regression on a long-tailed half (p_s far from "
        f"the balanced reference split of {REFERENCE_PER_CLASS} images per class). Largest "
        "absolute difference over every step and class; FLH-FTL, soft BBSE and ROGD in "
        "float64, UOGD in the authors' float32.",
        "",
        *harness.markdown_table(headers, rows, "lr" + "r" * (len(headers) - 2)),
        "",
        f"Worst: local {worst['local_soft_bbse']:.1e}, FLH-FTL {worst['flh_ftl']:.1e}, ROGD "
        f"{worst['rogd']:.1e} ({worst['rogd_30x_lr']:.1e} at 30 times the rate), UOGD kernel "
        f"{worst['uogd_kernel']:.1e} (entries up to {report['runs'][0]['kernel_scale']:.2f}), "
        f"logits {worst['uogd_logits']:.1e}, same predictions "
        f"{100 * worst['uogd_same_predictions']:.2f} %; UOGD's default learning rate "
        f"2 ||W|| / (L sqrt(T)) agrees to {worst['uogd_lr_relative']:.1e} (relative). How far "
        f"the compared quantities move (mean over the streams): FLH-FTL's prior "
        f"{moves['flh_ftl_mean_l1_move']:.3f} L1 a step, ROGD's "
        f"{moves['rogd_mean_l1_move']:.4f} ({moves['rogd_30x_mean_l1_move']:.3f} at 30 times "
        f"the rate), UOGD's kernel {moves['uogd_kernel_relative_move']:.3f} of its norm over a "
        "stream.",
        "",
        "Command: `/tmp/ols-venv/bin/python benchmarks/online_reference.py --authors-repo "
        "/tmp/ols` (the environment: this script's docstring). Not part of the test suite.",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--authors-repo",
        type=Path,
        required=True,
        help="an unpacked checkout of acmi-lab/OnlineLabelShift",
    )
    parser.add_argument(
        "--authors-commit",
        default="unknown",
        help="the commit the checkout is of, recorded with the results",
    )
    parser.add_argument("--steps", type=int, default=300, help="steps per stream (300)")
    parser.add_argument("--seed", type=int, default=8610, help="the authors' default seed")
    parser.add_argument("--output", type=Path, default=harness.RESULTS_DIR)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.authors_repo / "utils" / "model_utils.py").exists():
        raise SystemExit(f"error: {args.authors_repo}/utils/model_utils.py not found")
    modu, lsu = authors_modules(args.authors_repo.resolve())
    import torch

    data = digits_model()
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for shift in SHIFTS:
            for size in SIZES:
                started = time.time()
                run = {"shift": shift, "images_per_step": size}
                stream = authors_stream(lsu, data, shift, size, args.steps, args.seed)
                run.update(compare_estimators(modu, data, stream, args.steps, args.seed, root))
                run.update(compare_uogd(modu, data, stream, args.steps, args.seed, root))
                runs.append(run)
                log(
                    f"{shift:10s} {size:3d} images: local {run['local_soft_bbse']:.1e} FLH-FTL "
                    f"{run['flh_ftl']:.1e} ROGD {run['rogd']:.1e} UOGD kernel "
                    f"{run['uogd_kernel']:.1e} logits {run['uogd_logits']:.1e} same "
                    f"{run['uogd_same_predictions']:.4f} ({time.time() - started:.0f} s)"
                )
    keys = (
        "local_soft_bbse",
        "flh_ftl",
        "rogd",
        "rogd_30x_lr",
        "uogd_kernel",
        "uogd_logits",
        "uogd_lr_relative",
    )
    report = {
        "authors_commit": args.authors_commit,
        "authors_files": authors_files(args.authors_repo),
        "steps": args.steps,
        "seed": args.seed,
        "runs": runs,
        "worst": {k: max(r[k] for r in runs) for k in keys}
        | {"uogd_same_predictions": min(r["uogd_same_predictions"] for r in runs)},
        "machine": harness.machine_description() | {"torch": torch.__version__},
    }
    harness.write_json(args.output / "online_reference.json", report)
    lines = markdown(report)
    (args.output / "online_reference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def authors_files(repo: Path) -> dict[str, str]:
    """SHA-256 of the authors' files that ran, to tell which version was compared."""
    import hashlib

    names = ("utils/model_utils.py", "utils/label_shift_utils.py", "utils/misc_utils.py")
    return {name: hashlib.sha256((repo / name).read_bytes()).hexdigest() for name in names}


if __name__ == "__main__":
    sys.exit(main())
