"""keras.applications' two ImageNet helpers, with its signatures: `preprocess_input`, `decode_predictions`.

ImageNet-1k's 1000 class names ship with the package (`imagenet_classes.json`: WordNet id and name per
class, in class-index order; tests/scripts/make_imagenet_classes.py wrote it), so nothing is downloaded.

Example:
    >>> import numpy as np, keras_resnet_v2
    >>> model = keras_resnet_v2.from_timm("resnetv2_50.a1h_in1k")   # pixels 0..255 in  # doctest: +SKIP
    >>> images = np.random.uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    >>> probabilities = model.predict(keras_resnet_v2.preprocess_input(images))  # doctest: +SKIP
    >>> rows = keras_resnet_v2.decode_predictions(probabilities, top=3)  # doctest: +SKIP
    >>> [name for _, name, _ in rows[0]]   # the three likeliest classes' names, best first  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from keras_resnet_v2.names import DATA_FORMATS


def preprocess_input(x, data_format: str | None = None):
    """Returns `x` unchanged: the networks of this package that know their input statistics take pixels
    0..255 and standardize inside.

    `from_timm(...)` puts timm's normalization (`keras_resnet_v2.Standardize`) in front of the network and
    `resnet-v2-train` its training set's statistics, so their models take raw pixels and this function has
    nothing to do; keras.applications' EfficientNet and ConvNeXt have the same contract (their
    `preprocess_input` is a placeholder kept for API compatibility). A network built bare (`ResNet50()`)
    has no such layer and expects standardized images, as the paper trains it: put `Standardize(mean,
    variance)` with your data's statistics in front of it; this function cannot know them.
    `keras.applications.resnet_v2.preprocess_input` scales to [-1, 1] instead: do not feed its output to
    these models.

    Args:
        x: images, a NumPy array or a tensor of any backend, pixels 0..255.
        data_format: "channels_last", "channels_first" or None (`keras.config.image_data_format()`);
            checked, and without effect: no channel is touched.

    Example:
        >>> images = np.zeros((1, 224, 224, 3), "float32")
        >>> preprocess_input(images) is images
        True
    """
    if data_format is not None and data_format not in DATA_FORMATS:
        raise ValueError(f"`data_format` must be one of {DATA_FORMATS} or None. Received: data_format={data_format!r}")
    return x


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """ImageNet-1k's classes in class-index order: `(wordnet_id, name)`, e.g. `("n01440764", "tench")`."""
    with open(os.path.join(os.path.dirname(__file__), "imagenet_classes.json"), encoding="utf-8") as f:
        return tuple((wnid, name) for wnid, name in json.load(f))


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The `top` classes of each row of ImageNet predictions, best first, as keras.applications gives them.

    Args:
        preds: probabilities or logits of shape (samples, 1000), a NumPy array or a tensor of any backend.
        top: how many classes per row, 1 to 1000.

    Returns:
        One list per row of `(wordnet_id, class_name, score)` tuples, by decreasing score (equal scores by
        class index).

    Example:
        >>> decode_predictions(np.eye(1000)[[0, 2]], top=1)
        [[('n01440764', 'tench', 1.0)], [('n01484850', 'great_white_shark', 1.0)]]
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= 1000:
        raise ValueError(f"`top` must be an integer from 1 to 1000. Received: top={top!r}")
    if not isinstance(preds, np.ndarray):
        import keras

        preds = keras.ops.convert_to_numpy(preds)
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError("`decode_predictions` expects a batch of predictions (a 2D array of shape (samples, "
                         f"1000)). Received: an array of shape {preds.shape}")
    classes = imagenet_classes()
    return [[(*classes[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:top]] for row in preds]
