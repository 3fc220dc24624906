"""`python -m keras_resnet_v2.training ...` is `resnet-v2-train ...`."""

from keras_resnet_v2.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
