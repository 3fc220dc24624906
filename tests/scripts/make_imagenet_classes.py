"""Writes keras_resnet_v2/imagenet_classes.json: ImageNet-1k's 1000 classes as [WordNet id, name] pairs.

    python make_imagenet_classes.py TIMM_INFO_DIR OUT.json

TIMM_INFO_DIR is `timm/data/_info` of a timm wheel (`pip download timm --no-deps`, unzip; timm 1.0.31 was
used): `imagenet_synsets.txt` lists the 1000 WordNet ids in class-index order (sorted ids, the order every
ImageNet-1k classifier's outputs follow) and `imagenet_synset_to_lemma.txt` each id's lemmas. The name is
the first lemma with spaces as underscores, the form keras.applications' `decode_predictions` returns
(class 0 `tench`, class 2 `great_white_shark`).
"""

import json
import os
import sys

info, out = sys.argv[1:3]
with open(os.path.join(info, "imagenet_synsets.txt")) as f:
    synsets = [line.strip() for line in f if line.strip()]
lemmas = {}
with open(os.path.join(info, "imagenet_synset_to_lemma.txt")) as f:
    for line in f:
        wnid, _, names = line.rstrip("\n").partition("\t")
        lemmas[wnid] = names.split(",")[0].strip().replace(" ", "_")
assert len(synsets) == 1000 and synsets == sorted(synsets), "not ImageNet-1k's synset list"
with open(out, "w") as f:
    f.write("[\n" + ",\n".join(json.dumps([wnid, lemmas[wnid]]) for wnid in synsets) + "\n]\n")  # a class a line
