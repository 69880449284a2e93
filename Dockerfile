# The container image a compiled Kubeflow / Vertex spec of `pipeline/run.py --runner=kubeflow`
# names: this project installed on the pinned TFX base image, so every component (the
# LongTailExampleGen and ShiftEvaluator, the Trainers' and Tuner's function paths
# pipeline.trainer.run_fn / pipeline.tuner.tuner_fn, their executors in
# pipeline.training_components)
# imports the installed `lade_tf` and `pipeline` packages.
#
# Build from the repository root and push where the cluster can pull it, then compile with it:
#   docker build -t gcr.io/PROJECT/lade-tf:0.1.0 .
#   docker push gcr.io/PROJECT/lade-tf:0.1.0
#   python pipeline/run.py --runner=kubeflow --kubeflow-image gcr.io/PROJECT/lade-tf:0.1.0 \
#       --pipeline-root gs://BUCKET/lade
FROM gcr.io/tfx-oss-public/tfx:1.16.0

# The compiled spec sets each container's command itself
# (`python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor ...`).
WORKDIR /opt/lade-tf

# The pinned set the test suite runs with (TFX 1.16, TensorFlow 2.16.2, Keras 3, Beam 2.74,
# protobuf 3.20.3, kfp-pipeline-spec 0.2.2): an unpinned install would upgrade protobuf and
# break TFX. Copied first, so a code change does not redo this layer.
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

# The library as a regular install (its wheel holds lade_tf alone; dependencies are already in
# place), and the pipeline and the server from the source tree on PYTHONPATH, which every
# process of the container (the TFX executors, Beam workers) inherits.
COPY pyproject.toml README.md ./
COPY lade_tf/ lade_tf/
COPY pipeline/ pipeline/
COPY serving/ serving/
ENV PYTHONPATH=/opt/lade-tf
RUN python -m pip install --no-cache-dir --no-deps . \
    && python -c "import lade_tf.tf_training, pipeline.training_components, pipeline.trainer, pipeline.tuner, pipeline.shift_evaluator"

# No Debian Fashion-MNIST files in the image: `--source fashion_mnist` falls back to TFDS
# (downloaded at run time; set --tfds-data-dir to a gs:// cache), or use a tfds:/folder: source.
# Process settings of every container, as the entry points make them (lade_tf.process_settings):
# the same oneDNN CPU kernels on every CPU.
ENV TF_CPP_MIN_LOG_LEVEL=1 TF_ENABLE_ONEDNN_OPTS=1
