"""Image classifiers that map raw pixels (float32 0..255, [batch, H, W, C]) to logits [batch, C].

Pixel normalisation is a layer inside every model, so a saved or served model takes the same raw
pixels as the data pipeline produces. Only Keras 3 layers and `keras.ops` are used: the models
build, train and save on the TensorFlow and JAX backends alike. The classification head computes in
float32, so logits stay float32 under a `mixed_float16` policy.
"""

from __future__ import annotations

import numbers
import types
from typing import Callable, Sequence

import keras
from keras import layers, ops

RESNET32_VARIANTS = ("standard", "bbn")
ARCHITECTURES = ("auto", "resnet32", "resnet32_bbn", "small_cnn", "app:<Name>")

# PyTorch's kaiming_normal_ (fan_in, gain sqrt(2), not truncated), as in the CIFAR ResNet and BBN
# reference code; Keras' "he_normal" would truncate the normal.
KAIMING_NORMAL = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_in", "distribution": "untruncated_normal"},
}
# PyTorch BatchNorm2d defaults (momentum 0.1 there is 0.9 here), as the reference recipes use.
_BATCH_NORM = {"momentum": 0.9, "epsilon": 1e-5}


@keras.saving.register_keras_serializable(package="lade_tf")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step, on the TensorFlow backend, is
    TensorFlow's fused kernel (FusedBatchNormV3 and its fused gradient).

    Keras 3 normalises with separate moment, subtract, scale and shift ops (about 10 ops forward
    and more backward per layer); the fused kernel is one op each way, which makes the training
    step faster on CPUs (benchmarks/throughput.py; the README's "Speed" has the measurements).
    Same results up to float rounding: the normalisation uses the biased batch variance and the
    moving averages are updated as Keras does (the kernel's Bessel-corrected variance is
    converted back). Inference, other backends, synchronised (multi-replica) batch norm, masks
    and anything but 4-D channels-last input use Keras' own implementation.
    """

    def call(self, inputs, training=None, mask=None):
        """Fused on TensorFlow in training; Keras' BatchNormalization.call otherwise."""
        if (
            not training
            or mask is not None
            or self.synchronized
            or not (self.center and self.scale)
            or keras.backend.backend() != "tensorflow"
            or len(inputs.shape) != 4
            or self.axis not in (-1, 3)
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, self.compute_dtype)
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=ops.cast(self.gamma, "float32"),
            offset=ops.cast(self.beta, "float32"),
            mean=tf.zeros([0]),
            variance=tf.zeros([0]),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        count = ops.cast(ops.prod(ops.shape(x)[:3]), "float32")
        variance = variance * (count - 1.0) / count
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return y


@keras.saving.register_keras_serializable(package="lade_tf")
class ZeroPadShortcut(layers.Layer):
    """Parameter-free ResNet shortcut "option A": subsample spatially, zero-pad the channels.

    Formula:
        out = pad_channels(x[:, ::stride, ::stride, :]) to `filters` channels, the zeros split
        evenly before and after the existing channels (He et al. 2016, CIFAR experiments).

    Args:
        filters: output channels (>= input channels).
        stride: spatial subsampling factor.
    """

    def __init__(self, filters: int, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)

    def call(self, inputs):
        subsampled = inputs[:, :: self.stride, :: self.stride, :]
        extra = self.filters - subsampled.shape[-1]
        return ops.pad(subsampled, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def compute_output_shape(self, input_shape):
        def reduced(size):
            return None if size is None else -(-size // self.stride)

        return (input_shape[0], reduced(input_shape[1]), reduced(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


@keras.saving.register_keras_serializable(package="lade_tf")
class ApplicationPreprocessing(layers.Layer):
    """The `preprocess_input` of a `keras.applications` model as a (serialisable) layer.

    Args:
        application: class name in `keras.applications`, e.g. "ResNet50" or "MobileNetV2".
    """

    def __init__(self, application: str, **kwargs):
        super().__init__(**kwargs)
        self.application = application
        self._preprocess = _application_preprocess_input(application)

    def call(self, inputs):
        return self._preprocess(ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "application": self.application}


def resnet32(
    num_classes: int,
    input_shape: Sequence[int] = (32, 32, 3),
    variant: str = "standard",
    *,
    pixel_mean: float | Sequence[float] = 127.5,
    pixel_std: float | Sequence[float] = 127.5,
) -> keras.Model:
    """CIFAR ResNet-32 (He et al. 2016): 3 stages of 16/32/64 channels, basic blocks, GAP, dense.

    Both variants use option-A (zero-padded, parameter-free) shortcuts, Kaiming-normal
    convolutions and PyTorch batch-norm settings.

    Args:
        num_classes: C, the number of logits.
        input_shape: (H, W, channels) of the raw pixel input; any size works (global pooling).
        variant: "standard": 5 blocks per stage, 64-d feature (0.47 M parameters for 100
            classes, 0.46 M for 10). "bbn": the backbone the LADE authors trained (BBN's
            ResNet-32): stage 3 has 4 blocks, then two parallel 64-channel blocks whose outputs
            are concatenated into a 128-d feature (0.55 M parameters for 100 classes).
        pixel_mean, pixel_std: normalisation (x - mean) / std in pixel units, a number or one per
            channel; the default maps 0..255 to -1..1.

    Returns:
        A `keras.Model` named "resnet32" or "resnet32_bbn", raw pixels -> logits.

    Raises:
        ValueError: for an unknown variant or invalid sizes.
    """
    if variant not in RESNET32_VARIANTS:
        raise ValueError(f"variant = {variant!r}: expected one of {RESNET32_VARIANTS}")
    inputs, x = _normalised_input(num_classes, input_shape, pixel_mean, pixel_std)
    x = layers.Conv2D(
        16, 3, padding="same", use_bias=False, kernel_initializer=KAIMING_NORMAL, name="stem_conv"
    )(x)
    x = FusedBatchNormalization(name="stem_bn", **_BATCH_NORM)(x)
    x = layers.ReLU(name="stem_relu")(x)
    stage3_blocks = 5 if variant == "standard" else 4
    for stage, (filters, blocks) in enumerate(zip((16, 32, 64), (5, 5, stage3_blocks)), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, filters, stride, name=f"stage{stage}_block{block}")
    if variant == "bbn":
        # BBN's two branches (conventional and re-balancing) share the trunk; LADE keeps both and
        # concatenates them as one 128-d feature.
        x = layers.Concatenate(name="branches")(
            [_basic_block(x, 64, 1, name="cb_block"), _basic_block(x, 64, 1, name="rb_block")]
        )
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    head_init = KAIMING_NORMAL if variant == "standard" else "glorot_uniform"
    logits = layers.Dense(
        int(num_classes), kernel_initializer=head_init, dtype="float32", name="logits"
    )(x)
    return keras.Model(inputs, logits, name="resnet32" if variant == "standard" else "resnet32_bbn")


def small_cnn(
    num_classes: int,
    input_shape: Sequence[int] = (28, 28, 1),
    *,
    pixel_mean: float | Sequence[float] = 127.5,
    pixel_std: float | Sequence[float] = 127.5,
) -> keras.Model:
    """Small CNN for 28x28 grey images (Fashion-MNIST): 2 x (2 conv-BN-ReLU, max-pool), GAP, dense.

    Channels 32, 32, 64, 64; about 66 k parameters for 10 classes, a few seconds per epoch of
    Fashion-MNIST-LT on a CPU core.

    Args:
        num_classes: C, the number of logits.
        input_shape: (H, W, channels) of the raw pixel input.
        pixel_mean, pixel_std: as in `resnet32`.

    Returns:
        A `keras.Model` named "small_cnn", raw pixels -> logits.
    """
    inputs, x = _normalised_input(num_classes, input_shape, pixel_mean, pixel_std)
    for stage, filters in enumerate((32, 64), start=1):
        for conv in range(2):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer=KAIMING_NORMAL,
                name=f"conv{stage}_{conv}",
            )(x)
            x = FusedBatchNormalization(name=f"bn{stage}_{conv}", **_BATCH_NORM)(x)
            x = layers.ReLU(name=f"relu{stage}_{conv}")(x)
        x = layers.MaxPooling2D(name=f"pool{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(int(num_classes), dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="small_cnn")


def applications_backbone(
    name: str, num_classes: int, input_shape: Sequence[int], weights: str | None = None
) -> keras.Model:
    """A `keras.applications` backbone (e.g. "ResNet50", "MobileNetV2") with a new logits head.

    Grey inputs are repeated to three channels; the application's own `preprocess_input` runs as
    a layer inside the model; the backbone's global-average-pooled feature feeds a dense layer.

    Args:
        name: class name in `keras.applications`.
        num_classes: C, the number of logits.
        input_shape: (H, W, channels) of the raw pixel input; the application's minimum size
            applies (32x32 for most).
        weights: None (random initialisation, the default: nothing is downloaded), "imagenet", or
            a path to a weights file, as `keras.applications` accepts.

    Returns:
        A `keras.Model` named "app_<name>", raw pixels -> logits.

    Raises:
        ValueError: for an unknown application name (the message lists the known ones).
    """
    builder = getattr(keras.applications, name, None)
    if not name[:1].isupper() or not callable(builder):
        raise ValueError(
            f"application {name!r}: expected a keras.applications model, one of "
            f"{_application_names()}"
        )
    height, width, channels = _checked_input_shape(num_classes, input_shape)
    inputs = keras.Input(shape=(height, width, channels), name="images")
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    x = ApplicationPreprocessing(name, name="preprocess")(x)
    backbone = builder(
        include_top=False, weights=weights, input_shape=(height, width, 3), pooling="avg"
    )
    x = backbone(x)
    logits = layers.Dense(int(num_classes), dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"app_{name}")


def resolve_arch(arch: str, input_shape: Sequence[int]) -> str:
    """The architecture "auto" stands for: small_cnn for 28x28 grey images, else resnet32."""
    if arch == "auto":
        return "small_cnn" if tuple(input_shape) == (28, 28, 1) else "resnet32"
    return arch


def build_model(arch: str, num_classes: int, input_shape: Sequence[int]) -> keras.Model:
    """The model for an architecture name, raw pixels -> logits.

    Args:
        arch: "auto" (small_cnn for 28x28 grey images, resnet32 otherwise), "resnet32",
            "resnet32_bbn" (`resnet32(variant="bbn")`), "small_cnn", or "app:<Name>" for a
            randomly initialised `keras.applications` model.
        num_classes: C, the number of logits.
        input_shape: (H, W, channels).

    Raises:
        ValueError: for an unknown architecture.
    """
    arch = resolve_arch(arch, input_shape)
    if arch == "resnet32":
        return resnet32(num_classes, input_shape)
    if arch == "resnet32_bbn":
        return resnet32(num_classes, input_shape, variant="bbn")
    if arch == "small_cnn":
        return small_cnn(num_classes, input_shape)
    if arch.startswith("app:"):
        return applications_backbone(arch[len("app:") :], num_classes, input_shape)
    raise ValueError(f"arch = {arch!r}: expected one of {ARCHITECTURES}")


def _basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = ZeroPadShortcut(filters, stride, name=f"{name}_shortcut")(x)
    x = layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=KAIMING_NORMAL,
        name=f"{name}_conv1",
    )(x)
    x = FusedBatchNormalization(name=f"{name}_bn1", **_BATCH_NORM)(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=KAIMING_NORMAL,
        name=f"{name}_conv2",
    )(x)
    x = FusedBatchNormalization(name=f"{name}_bn2", **_BATCH_NORM)(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def _normalised_input(
    num_classes: int,
    input_shape: Sequence[int],
    pixel_mean: float | Sequence[float],
    pixel_std: float | Sequence[float],
):
    """Validated Input and its normalised tensor (x - mean) / std."""
    shape = _checked_input_shape(num_classes, input_shape)
    channels = shape[-1]

    def per_channel(value, what):
        values = (
            [float(value)] * channels
            if isinstance(value, (int, float))
            else [float(v) for v in value]
        )
        if len(values) != channels:
            raise ValueError(f"{what} = {value!r}: expected a number or {channels} values")
        return values

    mean = per_channel(pixel_mean, "pixel_mean")
    std = per_channel(pixel_std, "pixel_std")
    if min(std) <= 0:
        raise ValueError(f"pixel_std = {pixel_std!r}: expected values > 0")
    inputs = keras.Input(shape=shape, name="images")
    normalised = layers.Normalization(
        mean=mean, variance=[s * s for s in std], name="pixel_normalisation"
    )(inputs)
    return inputs, normalised


def _checked_input_shape(num_classes: int, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes = {num_classes!r}: expected an integer >= 2")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, numbers.Integral) and s > 0 for s in shape):
        raise ValueError(
            f"input_shape = {input_shape!r}: expected (height, width, channels), positive integers"
        )
    return tuple(int(s) for s in shape)


def _application_names() -> list[str]:
    return sorted(
        n
        for n in dir(keras.applications)
        if n[:1].isupper() and callable(getattr(keras.applications, n))
    )


def _application_preprocess_input(application: str) -> Callable:
    for module_name in sorted(dir(keras.applications)):
        module = getattr(keras.applications, module_name)
        if (
            isinstance(module, types.ModuleType)
            and hasattr(module, application)
            and hasattr(module, "preprocess_input")
        ):
            return module.preprocess_input
    raise ValueError(
        f"application {application!r}: no keras.applications module defines it with "
        f"a preprocess_input; known applications: {_application_names()}"
    )
