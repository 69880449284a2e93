import lade_tf  # noqa: F401  (sets the oneDNN default before TensorFlow loads)
