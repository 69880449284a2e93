"""A known generative model for label-shift tests: exact posteriors under any prior."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax


class GaussianClasses:
    """A known generative model: 2-D unit-variance Gaussian classes; exact posteriors for any prior.

    Means 4 apart (2.8 for the centre class): closer, the centre class is never the argmax under
    the skewed source prior and BBSE cannot identify its share (measured error 0.17).
    """

    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [2.0, 2.0]])

    def sample(self, prior, size, rng):
        labels = rng.choice(len(prior), size=size, p=prior)
        return labels, self.means[labels] + rng.normal(size=(size, 2))

    def posterior(self, x, prior):
        log_joint = -0.5 * ((x[:, None, :] - self.means[None]) ** 2).sum(-1) + np.log(prior)
        return softmax(log_joint, axis=1)


#: A long-tailed source prior and a reversed target prior over the 5 classes.
SOURCE = np.array([0.5, 0.25, 0.12, 0.08, 0.05])
TARGET = np.array([0.05, 0.1, 0.2, 0.3, 0.35])
