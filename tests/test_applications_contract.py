"""keras.applications' own contract (keras/src/applications/applications_test.py), test for test, against
ResNet50/101/152 in both image data formats (issue 39). Written anew for these networks; the rows that need
a download (its `test_application_base`: weights="imagenet" and a photo of an elephant) are covered offline
by tests/test_pretrained.py's weights="imagenet" test.
"""

import keras
import pytest

import keras_resnet_v2 as krv2
from conftest import tiered

# ResNet50 in the fast tier, the deeper two in the slow one; each in both formats.
APPS = tiered([krv2.ResNet50, krv2.ResNet101, krv2.ResNet152], slow=[krv2.ResNet101, krv2.ResNet152])
FORMATS = ["channels_last", "channels_first"]
LAST_DIM = 2048


@pytest.fixture(params=FORMATS)
def image_data_format(request):
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format(previous)


def _shape(image_data_format: str, channels, height, width) -> tuple:
    return (channels, height, width) if image_data_format == "channels_first" else (height, width, channels)


@pytest.mark.parametrize("app", APPS)
def test_notop_variable_input_channels(app, image_data_format):
    expected = [None, *_shape(image_data_format, LAST_DIM, None, None)]
    for channels in (1, 4):
        model = app(weights=None, include_top=False, input_shape=_shape(image_data_format, channels, None, None))
        assert list(model.outputs[0].shape) == expected


@pytest.mark.parametrize("app", APPS)
def test_notop_custom_input_shape(app, image_data_format):
    model = app(weights=None, include_top=False, input_shape=_shape(image_data_format, 3, 123, 123))
    assert list(model.outputs[0].shape)[1 if image_data_format == "channels_first" else -1] == LAST_DIM


@pytest.mark.parametrize("app", APPS)
def test_notop_custom_input_tensor(app, image_data_format):
    inputs = keras.Input(shape=_shape(image_data_format, 4, 200, 200), name="custom_input")
    x = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs)
    model = app(weights=None, include_top=False, input_tensor=x)
    assert list(model.outputs[0].shape)[1 if image_data_format == "channels_first" else -1] == LAST_DIM
    assert model.inputs[0] is inputs  # the network grows on the given tensor's graph


@pytest.mark.parametrize("app", APPS)
def test_pooling(app, image_data_format):
    model = app(weights=None, include_top=False, pooling="max")
    assert list(model.outputs[0].shape) == [None, LAST_DIM]


@pytest.mark.parametrize("app", APPS)
def test_classifier_activation_and_serialization(app, image_data_format):
    model = app(weights=None, include_top=True, classifier_activation="softmax")
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.input_shape == (None, *_shape(image_data_format, 3, 224, 224))
    # test_application_base's serialization half (its inference half needs a download)
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert len(rebuilt.weights) == len(model.weights)
    assert rebuilt.input_shape == model.input_shape and rebuilt.output_shape == model.output_shape
