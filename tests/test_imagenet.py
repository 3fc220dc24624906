"""keras.applications' `preprocess_input` and `decode_predictions`, with the shipped class names (issue 39)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet_v2 as krv2


def test_the_shipped_classes_are_imagenet_1k_in_class_index_order():
    classes = krv2.imagenet_classes()
    wnids = [wnid for wnid, _ in classes]
    assert len(classes) == 1000 and len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert all(wnid.startswith("n") and len(wnid) == 9 for wnid in wnids)
    # keras.applications' names: the first lemma, underscores for spaces (two synsets share "crane")
    assert classes[0] == ("n01440764", "tench") and classes[2] == ("n01484850", "great_white_shark")
    assert classes[134][1] == classes[517][1] == "crane" and classes[999] == ("n15075141", "toilet_tissue")
    assert not any(" " in name for _, name in classes)


def test_decode_predictions_gives_keras_rows_best_first_from_arrays_and_tensors():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1000)).astype("float32")
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    classes = krv2.imagenet_classes()
    for preds in (probabilities, tf.constant(probabilities), keras.ops.convert_to_tensor(probabilities)):
        rows = krv2.decode_predictions(preds, top=4)
        assert len(rows) == 3
        for row, p in zip(rows, probabilities, strict=True):
            expected = np.argsort(p)[::-1][:4]
            assert [(w, n) for w, n, _ in row] == [classes[i] for i in expected]
            np.testing.assert_allclose([score for _, _, score in row], p[expected], rtol=1e-6)
            assert all(isinstance(score, float) for _, _, score in row)
    assert len(krv2.decode_predictions(probabilities)[0]) == 5  # keras' default
    ties = np.zeros((1, 1000), "float32")
    ties[0, [7, 3]] = 0.5
    assert [w for w, _, _ in krv2.decode_predictions(ties, top=2)[0]] == [classes[3][0], classes[7][0]]


@pytest.mark.parametrize("preds,top,message", [
    (np.zeros((1000,)), 5, r"shape \(samples, 1000\)\)\. Received: an array of shape \(1000,\)"),
    (np.zeros((2, 10)), 5, r"Received: an array of shape \(2, 10\)"),
    (np.zeros((1, 1000)), 0, r"`top` must be an integer from 1 to 1000. Received: top=0"),
    (np.zeros((1, 1000)), 2.5, r"Received: top=2.5"),
    (np.zeros((1, 1000)), True, r"Received: top=True"),
])
def test_decode_predictions_refuses_bad_input_in_one_line(preds, top, message):
    with pytest.raises(ValueError, match=message) as caught:
        krv2.decode_predictions(preds, top=top)
    assert "\n" not in str(caught.value)


def test_preprocess_input_leaves_pixels_to_the_model_and_checks_data_format():
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    assert krv2.preprocess_input(images) is images
    tensor = tf.constant(images)
    assert krv2.preprocess_input(tensor, data_format="channels_first") is tensor
    with pytest.raises(ValueError, match=r"Received: data_format='NHWC'"):
        krv2.preprocess_input(images, data_format="NHWC")


def test_the_class_file_is_what_its_script_writes(tmp_path):
    # tests/scripts/make_imagenet_classes.py on files in timm's layout gives this file's format.
    import subprocess
    import sys

    info = tmp_path / "info"
    info.mkdir()
    shipped = krv2.imagenet_classes()
    (info / "imagenet_synsets.txt").write_text("\n".join(w for w, _ in shipped) + "\n")
    (info / "imagenet_synset_to_lemma.txt").write_text(
        "n00000001\tunrelated, other\n" + "".join(f"{w}\t{n.replace('_', ' ')}, alias\n" for w, n in shipped))
    script = os.path.join(os.path.dirname(__file__), "scripts", "make_imagenet_classes.py")
    subprocess.run([sys.executable, script, str(info), str(tmp_path / "out.json")], check=True, timeout=60)
    written = (tmp_path / "out.json").read_text()
    assert [tuple(pair) for pair in json.loads(written)] == list(shipped)
    packaged = os.path.join(os.path.dirname(krv2.__file__), "imagenet_classes.json")
    assert written == open(packaged, encoding="utf-8").read()
