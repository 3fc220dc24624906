"""The package's plumbing: what training, export and the command lines share. Nothing here builds a network.

- `files`: one writer per directory (`DirectoryLock`), writable-directory and model-file checks,
  OS errors in one line.
- `images`: image preprocessing for training, evaluation and serving alike (TensorFlow ops).
- `startup`: the command lines' first line and their quiet backend start.
- `interrupts`: Ctrl-C and SIGTERM that stop a run for sure (one line, the shell's exit code).
- `extras`: what each optional part (`train`, `export`) needs installed, checked before import.
- `lazy`: light packages (names imported on first use, Keras classes registered when Keras loads).

The arrows point one way: `keras_resnet_v2.training`, `keras_resnet_v2.export` and the command
lines import these modules; these modules import neither them nor the model code.

Example:
    >>> from keras_resnet_v2.plumbing.files import DirectoryLock
    >>> with DirectoryLock("runs/digits", "training"):
    ...     pass   # this process is the directory's only writer
"""
