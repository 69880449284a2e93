"""lade_tf.models: sizes, the option-A shortcut, real-pixel forward passes, .keras round trips."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lade_tf import models


def _trainable_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.fixture(scope="module")
def digit_pixels(digits):
    """Real digits as raw 0..255 pixels: (32x32x3 RGB [64], 28x28x1 grey [64], labels [64])."""
    images, labels = digits
    images = images[:64].astype(np.float32)
    rgb = np.repeat(np.kron(images, np.ones((4, 4), np.float32))[..., None], 3, axis=-1)
    grey = np.pad(np.kron(images, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))[..., None]
    return rgb, grey, labels[:64]


@pytest.fixture(scope="module")
def bbn10() -> keras.Model:
    return models.resnet32(10, variant="bbn")


# Measured trainable parameters (PyTorch counts the same: batch-norm moving statistics excluded);
# with 10 classes: 464,154 (standard) and 538,778 (bbn, checked in test_resnet32_layouts).
@pytest.mark.parametrize(
    "variant, num_classes, expected", [("standard", 100, 470_004), ("bbn", 100, 550_388)]
)
def test_resnet32_parameter_counts(variant, num_classes, expected):
    model = models.resnet32(num_classes, variant=variant)
    assert _trainable_parameters(model) == expected
    approx = {"standard": 0.46e6, "bbn": 0.55e6}[variant]
    assert abs(expected - approx) / approx < 0.03


def test_resnet32_layouts(bbn10):
    standard, bbn = models.resnet32(10), bbn10
    assert (_trainable_parameters(standard), _trainable_parameters(bbn)) == (464_154, 538_778)

    def convs(model):
        return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    assert len(convs(standard)) == 1 + 2 * 15  # stem + 3 stages x 5 basic blocks
    assert len(convs(bbn)) == 1 + 2 * (5 + 5 + 4 + 2)  # stage 3 has 4 blocks, plus 2 branches
    assert [layer.filters for layer in convs(standard)][-1] == 64
    assert bbn.get_layer("branches").output.shape[1:] == (8, 8, 128)
    assert bbn.get_layer("logits").kernel.shape == (128, 10)
    assert standard.get_layer("logits").kernel.shape == (64, 10)
    shortcuts = [layer for layer in bbn.layers if isinstance(layer, models.ZeroPadShortcut)]
    assert [(layer.filters, layer.stride) for layer in shortcuts] == [(32, 2), (64, 2)]


def test_convolutions_use_untruncated_kaiming_normal(bbn10):
    kernel = keras.ops.convert_to_numpy(bbn10.get_layer("cb_block_conv1").kernel).ravel()
    std = np.sqrt(2.0 / (3 * 3 * 64))  # PyTorch kaiming_normal_: fan_in, gain sqrt(2)
    assert kernel.std() == pytest.approx(std, rel=0.03)
    # A truncated normal (Keras "he_normal") has no value beyond 2 sigma; a normal has 4.55 %.
    assert np.mean(np.abs(kernel) > 2 * std) == pytest.approx(0.0455, abs=0.01)


def test_zero_pad_shortcut_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
    got = keras.ops.convert_to_numpy(models.ZeroPadShortcut(32, 2)(x))
    expected = np.zeros((2, 4, 4, 32), np.float32)
    expected[..., 8:24] = x[:, ::2, ::2, :]
    np.testing.assert_array_equal(got, expected)
    assert models.ZeroPadShortcut(32, 2).compute_output_shape((None, 7, 7, 16)) == (None, 4, 4, 32)


def test_forward_pass_on_real_pixels(digit_pixels, bbn10):
    rgb, grey, _ = digit_pixels
    model = bbn10
    normalised = keras.Model(model.input, model.get_layer("pixel_normalisation").output)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalised(rgb[:4])), (rgb[:4] - 127.5) / 127.5, atol=1e-6
    )
    for net, images in ((model, rgb), (models.small_cnn(10), grey)):
        logits = keras.ops.convert_to_numpy(net(images, training=False))
        assert logits.shape == (len(images), net.output_shape[-1])
        assert logits.dtype == np.float32 and np.isfinite(logits).all()
        # Logits, not probabilities: rows do not sum to one and take negative values.
        assert (logits < 0).any() and not np.allclose(logits.sum(axis=1), 1.0)


@pytest.mark.timeout(120)
def test_small_cnn_learns_real_digits(digits):
    images, labels = digits
    grey = np.pad(
        np.kron(images[:192].astype(np.float32), np.ones((3, 3), np.float32)),
        ((0, 0), (2, 2), (2, 2)),
    )[..., None]
    keras.utils.set_random_seed(0)
    model = models.small_cnn(10)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(grey, labels[:192], batch_size=32, epochs=4, verbose=0)
    # Measured: loss 2.28 -> 0.90, training accuracy 0.97 after 4 epochs (24 steps).
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.7


def test_per_channel_normalisation():
    model = models.resnet32(10, pixel_mean=[125.3, 123.0, 113.9], pixel_std=[63.0, 62.1, 66.7])
    layer = model.get_layer("pixel_normalisation")
    pixel = np.full((1, 32, 32, 3), 200.0, np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(pixel))[0, 0, 0],
        (200.0 - np.array([125.3, 123.0, 113.9])) / [63.0, 62.1, 66.7],
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "arch, input_shape",
    [("resnet32_bbn", (32, 32, 3)), ("small_cnn", (28, 28, 1)), ("app:MobileNet", (32, 32, 1))],
)
def test_keras_save_load_round_trip(tmp_path, digit_pixels, bbn10, arch, input_shape):
    rgb, grey, _ = digit_pixels
    images = {(32, 32, 3): rgb, (28, 28, 1): grey, (32, 32, 1): rgb[..., :1]}[input_shape][:8]
    model = bbn10 if arch == "resnet32_bbn" else models.build_model(arch, 10, input_shape)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images)),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert restored.name == model.name and restored.output_shape == (None, 10)


def test_build_model_dispatch(monkeypatch):
    # Which builder each name reaches (the builders themselves are tested above).
    for builder in ("resnet32", "small_cnn", "applications_backbone"):
        monkeypatch.setattr(
            models, builder, lambda *args, _name=builder, **kwargs: (_name, args, kwargs)
        )
    assert models.build_model("auto", 10, (28, 28, 1)) == ("small_cnn", (10, (28, 28, 1)), {})
    assert models.build_model("auto", 10, (32, 32, 3))[0] == "resnet32"
    assert models.build_model("auto", 10, (28, 28, 3))[0] == "resnet32"
    assert models.build_model("resnet32_bbn", 10, (32, 32, 3)) == (
        "resnet32",
        (10, (32, 32, 3)),
        {"variant": "bbn"},
    )
    assert models.build_model("app:ResNet50", 7, (32, 32, 3)) == (
        "applications_backbone",
        ("ResNet50", 7, (32, 32, 3)),
        {},
    )


def test_logits_stay_float32_under_mixed_precision(digit_pixels):
    rgb, grey, _ = digit_pixels
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for model, images in ((models.small_cnn(10), grey[:2]), (models.resnet32(10), rgb[:2])):
            assert keras.ops.convert_to_numpy(model(images)).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.resnet32(1), "num_classes"),
        (lambda: models.resnet32(10, input_shape=(32, 32)), "input_shape"),
        (lambda: models.resnet32(10, variant="wide"), "variant"),
        (lambda: models.small_cnn(10, pixel_std=0.0), "pixel_std"),
        (lambda: models.resnet32(10, pixel_mean=[1.0, 2.0]), "pixel_mean"),
        (lambda: models.build_model("vgg", 10, (32, 32, 3)), "arch = 'vgg'"),
        (lambda: models.build_model("app:NoSuchNet", 10, (32, 32, 3)), "NoSuchNet.*ResNet50"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
