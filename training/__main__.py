"""`python -m training ...` is `resnet-v2-train ...`."""

from training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
