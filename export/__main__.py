"""`resnet-v2-export [export] MODEL [--savedmodel BASE_DIR] [--onnx FILE] [--litert FILE] [--openvino FILE.xml]
[--int8-onnx FILE] [--int8-litert FILE] ...` and `resnet-v2-export verify MODEL [the same flags]`.

MODEL is a `.keras` file or a directory holding `model.keras` (a training run directory).
Every export is verified against the Keras model and a `verification.json` report is written
beside the first (`BASE_DIR/<version>.verification.json`, `FILE.verification.json`). The format
flags, their arguments and help lines are `keras_resnet_v2.export.formats.FORMATS`, one per format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from typing import Optional, Sequence

from keras_resnet_v2.export import formats
from keras_resnet_v2.names import short_repr
from keras_resnet_v2.plumbing.files import describe_os_error, model_file, read_json_object
from keras_resnet_v2.plumbing.startup import VERBOSE_HELP, announce, start_backend


def _run_details(path: str) -> dict:
    """Labels and training metadata when MODEL is a training run directory (its config.json)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return {}
    config = read_json_object(config_path)
    from keras_resnet_v2 import export

    labels = config.get("class_names") or None
    if labels is not None and not (isinstance(labels, list) and all(isinstance(name, str) for name in labels)):
        raise ValueError(f"{config_path} is damaged: `class_names` must be a list of class-name strings. "
                         f"Received: class_names={short_repr(labels)}")
    return {"extra_metadata": export.training_metadata(config), "labels": labels,
            "preprocessing": export.run_preprocessing(config)}


def _check_version_dir(path: str, flag: str) -> None:
    """`verify --savedmodel` takes one version (BASE/N), not the base directory TF Serving reads."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return
    versions = sorted((n for n in os.listdir(path) if n.isdigit()), key=int) if os.path.isdir(path) else []
    hint = (f"; {path} is a base directory: give a version, e.g. {os.path.join(path, versions[-1])}" if versions
            else "")
    raise ValueError(f"{flag} must be a SavedModel version directory (holding saved_model.pb){hint}. "
                     f"Received: {path!r}")


CALIBRATION_HELP = ("int8: a folder of images to calibrate on (default: a training run's deploy_sample.npz, "
                    "its training images; its test split checks the accuracy)")


def _wants_int8(targets: dict) -> bool:
    """Whether any of the requested formats (by name) is an int8 one (`Format.int8`)."""
    return any(formats.BY_NAME[name].int8 for name in targets)


def _add_format_flags(parser: argparse.ArgumentParser, verify_only: bool) -> None:
    for entry in formats.FORMATS:
        parser.add_argument(entry.flag, dest=entry.name, metavar=entry.verify_target if verify_only else entry.target,
                            help=entry.purpose)
    parser.add_argument("--calibration", metavar="DIR", help=CALIBRATION_HELP)
    parser.add_argument("--max-accuracy-drop", type=float, metavar="P", default=1.0,
                        help="int8: refuse (publish nothing) when it loses more than P points of accuracy (default 1)")


INPUT_SCALE_HELP = ("multiply served pixels by S before a network with no scaling layer in front (1/255 = "
                    "0.00392156862745098 for one trained on pixels / 255; default: none, with a warning)")


def _ours(filename: str) -> bool:
    """Whether `filename` is one of the package's modules: under keras_resnet_v2/ after `pip install .`, and
    also under the checkout's export/ and training/ in an editable install (`package_dir`)."""
    import importlib.util

    folders = [location for name in ("keras_resnet_v2", "keras_resnet_v2.export", "keras_resnet_v2.training")
               for spec in [importlib.util.find_spec(name)] if spec and spec.submodule_search_locations
               for location in spec.submodule_search_locations]
    path = os.path.abspath(filename)
    return any(path.startswith(os.path.abspath(folder) + os.sep) for folder in folders)


@contextlib.contextmanager
def _our_warnings_in_one_line():
    """The package's own warnings (a bare network's input scale) as one `warning: ...` line on stderr."""
    with warnings.catch_warnings():
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if _ours(filename):
                print(f"warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def crop_fraction(text: str) -> float:
    """argparse type of --crop-fraction: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1]. Received: {text!r}")
    return value


def _preprocessing_for(args, model, default: Optional[str]):
    """The run's (or a converted model's) preprocessing, with the flags given on top."""
    from keras_resnet_v2 import pretrained
    from keras_resnet_v2.plumbing import images

    base = images.as_preprocessing(default or pretrained.timm_preprocessing(model) or "resize")
    return base.overridden(getattr(args, "preprocessing", None), getattr(args, "crop_fraction", None),
                           getattr(args, "interpolation", None))


COMMANDS = ("export", "verify")


def _parser() -> argparse.ArgumentParser:
    """One parser, a sub-parser per command (`parser.commands[name]`); `export` is the default
    (`_command_line` names it)."""
    parser = argparse.ArgumentParser(prog="resnet-v2-export", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    parser.commands = commands.choices
    _export_arguments(commands.add_parser(
        "export", prog="resnet-v2-export", description=__doc__.split("\n\n")[0],
        epilog="resnet-v2-export verify --help: check existing exports against a model"))
    _verify_arguments(commands.add_parser(
        "verify", prog="resnet-v2-export verify",
        description="Run one batch through the Keras model and existing exports; fail above the float32 bound. "
                    "Writes VERSION_DIR.verification.json (or FILE.verification.json)."))
    return parser


def _command_line(argv: Sequence[str]) -> list:
    """`resnet-v2-export MODEL ...` is `resnet-v2-export export MODEL ...`."""
    return list(argv) if argv[:1] and argv[0] in COMMANDS else ["export", *argv]


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .keras file or a directory holding model.keras (a training run)")
    _add_format_flags(parser, verify_only=False)
    parser.add_argument("--calibration-images", type=int, default=256, metavar="N",
                        help="int8: calibrate on N images (default 256; a run's sample holds 512)")
    parser.add_argument("--version", type=int, help="SavedModel version number (default: next free)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing SavedModel version")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    parser.add_argument("--preprocessing", choices=("resize", "shorter_side_crop"),
                        help="how serve_image_bytes sizes images (default: the run's; timm's for a model "
                             "from_timm converted; else resize)")
    parser.add_argument("--crop-fraction", type=crop_fraction, metavar="F",
                        help="shorter_side_crop: the centre crop's share of the resized shorter side (default "
                             "224/256 = 0.875; timm's checkpoints 0.95)")
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic"),
                        help="shorter_side_crop's resize (default bilinear; bicubic for timm's checkpoints)")
    parser.add_argument("--input-scale", type=float, metavar="S", help=INPUT_SCALE_HELP)
    parser.add_argument("--labels", metavar="FILE",
                        help="class names, one a line, in class order (default: a training run's own); written "
                             "to the SavedModel's labels.txt and the ONNX metadata")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a .keras file or a directory holding model.keras (a training run)")
    _add_format_flags(parser, verify_only=True)
    parser.add_argument("--input-scale", type=float, metavar="S", help="the --input-scale the exports were made with")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _read_labels(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--labels {path!r} is not a readable text file ({error})") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Arguments checked first (no TensorFlow yet), one line saying what runs, then TensorFlow, quietly."""
    args = _parser().parse_args(_command_line(sys.argv[1:] if argv is None else argv))
    verify_only = args.command == "verify"
    targets = {entry.name: getattr(args, entry.name) for entry in formats.FORMATS if getattr(args, entry.name)}
    if not targets:
        print(f"error: give at least one of {', '.join(entry.flag for entry in formats.FORMATS)}", file=sys.stderr)
        return 2
    try:
        model_file(args.model)
        if not 0 <= args.max_accuracy_drop <= 100:
            raise ValueError(f"--max-accuracy-drop must be a number of points from 0 to 100. Received: "
                             f"{args.max_accuracy_drop}")
        if not verify_only and _wants_int8(targets):
            from keras_resnet_v2.export.calibration import check_count

            check_count(args.calibration_images)
        if args.input_scale is not None and not (args.input_scale > 0 and args.input_scale != float("inf")):
            raise ValueError(f"--input-scale must be a positive number. Received: {args.input_scale}")
        if not verify_only and args.preprocessing == "resize" and (args.crop_fraction or args.interpolation):
            raise ValueError("--crop-fraction and --interpolation apply to --preprocessing shorter_side_crop, not "
                             f"resize. Received: --crop-fraction {args.crop_fraction}, --interpolation "
                             f"{args.interpolation}")
        for name, target in targets.items():
            if verify_only and formats.BY_NAME[name].versioned:
                _check_version_dir(target, formats.BY_NAME[name].flag)
        labels = None if verify_only or not args.labels else _read_labels(args.labels)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    announce("resnet-v2-export verify" if verify_only else "resnet-v2-export",
             f"{'checking' if verify_only else 'exporting'} {args.model} {'against' if verify_only else 'to'} "
             f"{' and '.join(targets.values())}; starting TensorFlow")
    start_backend(args.verbose)

    with _our_warnings_in_one_line():
        return _export_or_verify(args, verify_only, targets, labels)


def _int8_images(args, model, targets: dict, preprocessing) -> dict:
    """calibration= and evaluation= for int8 targets (export.calibration.images_for), else nothing."""
    if not _wants_int8(targets):
        return {}
    from keras_resnet_v2.export import calibration

    count = getattr(args, "calibration_images", 0)  # verify: every image of --calibration checks
    images, evaluation, source = calibration.images_for(args.model, model.input_shape[1:], count, args.calibration,
                                                        preprocessing)
    print(f"int8: calibrating on {source}; checking on {len(evaluation[0])} "
          f"{'test images' if evaluation[1] is not None else 'unlabelled images'}", flush=True)
    return {"calibration": images, "evaluation": evaluation, "max_accuracy_drop": args.max_accuracy_drop}


def _export_or_verify(args, verify_only: bool, targets: dict, labels: Optional[list] = None) -> int:
    from keras_resnet_v2 import export
    from keras_resnet_v2.export.serving import with_input_scale

    try:
        model = export.load_model(args.model)
        details = _run_details(args.model)
        if verify_only:
            model = with_input_scale(model, args.input_scale)
            int8 = _int8_images(args, model, targets, _preprocessing_for(args, model, details.get("preprocessing")))
            int8.pop("calibration", None)
            first = next(iter(targets.values())).rstrip(os.sep)
            report_path = f"{first}.verification.json"
            report = export.verify(model, report_path=report_path, **int8, **targets)
        else:
            details["preprocessing"] = _preprocessing_for(args, model, details.get("preprocessing"))
            if labels is not None:
                details["labels"] = labels
            int8 = _int8_images(args, model, targets, details["preprocessing"])
            result = export.export_and_verify(model, version=args.version, overwrite=args.overwrite, opset=args.opset,
                                              input_scale=args.input_scale, **details, **int8, **targets)
            report, report_path = result["report"], result["report_path"]
            for entry in formats.FORMATS:
                if result.get(entry.name):
                    print(f"{entry.title}: {result[entry.name]} ({report[entry.name + '_s']} s)")
                    if hasattr(entry.writer, "summary"):
                        print(entry.writer.summary(result[entry.name], report[entry.name]))
        print(json.dumps(report, indent=2))
        print(f"verification passed; report: {report_path}")
    except (ValueError, FileExistsError, export.VerificationError, export.DirectoryBusyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a permission changed mid-export: nothing was published
        print(f"error: {describe_os_error(error)}; nothing was published", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
