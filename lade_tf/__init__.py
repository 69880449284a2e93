"""lade-tf: LADE and PC Softmax for long-tailed classification under label shift."""

import os

# TensorFlow 2.16 turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 or AMX. On
# AVX2 CPUs (this project's AMD EPYC machines) convolution gradients then run on generic kernels
# about 4x slower (benchmarks/throughput.py). On for every CPU, so every machine runs the same
# kernels; TF_ENABLE_ONEDNN_OPTS=0 still turns them off. It must be set before TensorFlow loads,
# so the pipeline, serving and test packages import this package first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
