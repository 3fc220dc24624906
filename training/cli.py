"""`resnet-v2-train`: train a paper configuration, evaluate a saved model, or sweep a paper table.

    resnet-v2-train --dataset digits --model resnet20 --epochs 30 --batch-size 64 --run-dir runs/digits
    resnet-v2-train --init runs/digits --dataset my_images/ --freeze backbone --run-dir runs/mine
    resnet-v2-train evaluate --model runs/digits --dataset digits
    resnet-v2-train sweep --table 2 --dataset cifar10 --model resnet110 --run-dir runs/table2

Every recipe value can be set by a flag (`--lr 0.05 --warmup-steps 0 ...`) or a JSON/YAML
`--config` file whose keys are the flags' names with underscores; flags win over the file,
the file over the recipe. The effective configuration goes to RUN_DIR/config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from keras_resnet_v2.names import BLOCKS, PADDINGS, SHORTCUT_NAMES, UNITS
from keras_resnet_v2.plumbing import interrupts
from keras_resnet_v2.plumbing.files import model_file
from keras_resnet_v2.plumbing.startup import VERBOSE_HELP, announce, start_backend
from keras_resnet_v2.training.config import PRECISIONS, STRATEGIES, TrainConfig, check_settings
from keras_resnet_v2.training.recipes import RECIPES

RECIPE_FLAGS = {  # recipe field -> type (batch_size has its own flag)
    "lr": float, "momentum": float, "weight_decay": float, "decay": str, "warmup_steps": int,
    "warmup_lr": float, "lr_factor": float, "normalization": str,
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


TRAIN_EPILOG = """\
subcommands:
  resnet-v2-train evaluate --model RUN_DIR_OR_FILE --dataset NAME   top-1/top-5 error of a saved model
  resnet-v2-train sweep --table 1|2|3 --run-dir DIR ...              every row of a paper table
  (each takes --help)

Unset recipe values (lr, momentum, weight decay, warm-up, boundaries, normalization, batch size,
length) come from --recipe; RUN_DIR/config.json records every effective value.
Fine-tuning (--init SOURCE): SOURCE decides the network and the preprocessing; the recipe defaults
to finetune (warm-up, cosine decay, a tenth of the paper's lr); a resumed run never reads SOURCE again.
"""

REQUIRED = ("dataset", "model", "run_dir")


def _export_formats_help() -> str:
    """--export-formats' help, from the export table (keras_resnet_v2.export.formats: no TensorFlow)."""
    try:
        from keras_resnet_v2.export import formats
    except ImportError:  # the `export` extra is missing: the help says so rather than listing what cannot run
        return 'comma-separated formats of --export-dir (needs the export extra: pip install "keras_resnet_v2[export]")'
    return (f"comma-separated formats of --export-dir: {formats.names_help()} (default savedmodel,onnx; int8 ones "
            "calibrated on the run's training images)")


def _parser() -> argparse.ArgumentParser:
    """One parser, a sub-parser per command (`parser.commands[name]`); `train` is the default
    (`_command_line` names it)."""
    parser = argparse.ArgumentParser(prog="resnet-v2-train", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    parser.commands = commands.choices
    _train_arguments(commands.add_parser(
        "train", prog="resnet-v2-train", description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS,
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))
    _eval_arguments(commands.add_parser(
        "evaluate", prog="resnet-v2-train evaluate",
        description="Top-1 and top-5 error of a saved model on a test split."))
    _sweep_arguments(commands.add_parser(
        "sweep", prog="resnet-v2-train sweep",
        description="Every row of the paper's Table 1, 2 or 3, one run per row and seed."))
    return parser


def _command_line(argv: Sequence[str]) -> list[str]:
    """`argv` with its command named: training is the default (`resnet-v2-train --dataset ...`)."""
    return list(argv) if argv[:1] and argv[0] in COMMANDS else ["train", *argv]


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="required: digits (offline), a TFDS name (cifar10, cifar100, imagenet2012) "
                                     "or an image folder")
    p.add_argument("--model", help="required (but with --init): resnet20 ... resnet1202, resnet164, resnet1001, "
                                   "resnet18 ... resnet200")
    p.add_argument("--run-dir", help="required: run directory (rerun the same command to resume)")
    p.add_argument("--init", metavar="SOURCE",
                   help="fine-tune: start from a run directory, a .keras file, a timm checkpoint (.safetensors, "
                        ".pth, .bin) or a timm name (resnetv2_50.a1h_in1k); the network and preprocessing are "
                        "SOURCE's, the classifier new; default recipe finetune")
    p.add_argument("--freeze", metavar="PARTS",
                   help="with --init: none (default), backbone (only the new classifier trains) or parts, e.g. "
                        "stem,stage1 (also stage2.., post); frozen BatchNorm runs in inference mode")
    p.add_argument("--unit", choices=UNITS, help="residual unit (Fig. 4), default full_preact")
    p.add_argument("--shortcut", choices=SHORTCUT_NAMES, help="shortcut (Fig. 2), default identity")
    p.add_argument("--block", choices=BLOCKS, help="CIFAR units; single is one 3x3 conv (Table 3's 1-layer "
                                                   "skip); default: the paper's for the depth")
    p.add_argument("--option", action="append", type=_option, dest="options", metavar="KEY=VALUE",
                   help="variant option, e.g. --option gate_bias=-6 (repeatable)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="default: the recipe's length (paper_cifar: 64k iterations)")
    length.add_argument("--steps", type=int, help="iterations (instead of --epochs)")
    p.add_argument("--batch-size", type=int, help="global batch (default: the recipe's, 128 for paper_cifar)")
    p.add_argument("--recipe", choices=tuple(RECIPES), help="default paper_cifar; finetune with --init")
    p.add_argument("--precision", choices=PRECISIONS, help="default float32")
    p.add_argument("--strategy", choices=STRATEGIES, help="default auto")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--config", help="JSON or YAML file of settings")
    p.add_argument("--export-dir", help="export here at the end, verified (--export-formats)")
    p.add_argument("--export-formats", metavar="LIST", help=_export_formats_help())
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--image-size", type=int, help="input size (default: the dataset's, or 224)")
    p.add_argument("--eval-size", type=int, help="also test at this crop, ImageNet-style data (the paper's 320)")
    p.add_argument("--nesterov", type=_bool)
    p.add_argument("--scale-augmentation", type=_bool, help="image folders: native size + ImageNet-style pipeline")
    p.add_argument("--boundaries", type=lambda s: tuple(float(x) for x in s.split(",")),
                   help="lr boundaries in the recipe's units, comma-separated")
    for name, kind in RECIPE_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind)
    p.add_argument("--padding", choices=PADDINGS,
                   help="stride-2 convs pad kernel//2 on every side (symmetric, default: the paper's Torch "
                        "code) or as Keras' 'same' (runs made before that default; needed to resume them)")
    p.add_argument("--fused-batchnorm", type=_bool, help="train BatchNorm through TF's fused kernel (default true)")
    p.add_argument("--remat", action="store_true",
                   help="rematerialize runs of about sqrt(units) residual units (with --scan: each unit): "
                        "less memory, more compute")
    p.add_argument("--scan", action=argparse.BooleanOptionalAction,
                   help="units 2..n of each stage as one loop (keras_resnet_v2.UnitStack): deep nets start "
                        "training sooner; the same network and files (convert with keras_resnet_v2.to_plain). "
                        "Default: on from 100 units a stage (resnet1001, resnet1202), off below")
    p.add_argument("--jit-compile", choices=("auto", "true", "false"),
                   help="compile each replica's train step with XLA (default auto: on with one replica on a GPU)")
    p.add_argument("--steps-per-execution", type=int, metavar="N",
                   help="train steps per call, one host sync per N (default 1; progress and callbacks every N)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: leave out images that do not decode (default: stop, naming them)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .keras file or a run directory")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-size", type=int, help="test crop for ImageNet-style data (e.g. 320; default: model's)")
    p.add_argument("--crop-fraction", type=float, metavar="F",
                   help="ImageNet-style data: the centre crop's share of the resized shorter side (default 0.875; "
                        "0.95 for a model from_timm converted)")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic"),
                   help="ImageNet-style data: how the shorter side is resized (default bilinear; bicubic for a "
                        "model from_timm converted)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=int, required=True, choices=(1, 2, 3))
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--model", default="resnet110")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int)
    length.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int, default=1, help="runs per row (seeds 0..K-1)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--recipe", choices=tuple(RECIPES), default="paper_cifar")
    p.add_argument("--precision", default="float32", choices=PRECISIONS)
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.add_argument("--data-dir")
    p.add_argument("--dry-run", action="store_true", help="list the rows and run directories, train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def _sweep(args: argparse.Namespace) -> int:
    """Runs (or, with --dry-run, lists) the parsed `resnet-v2-train sweep` command."""
    from keras_resnet_v2.training.sweep import run_sweep

    results = run_sweep(args.table, run_dir=args.run_dir, dataset=args.dataset, model=args.model, seeds=args.seeds,
                        dry_run=args.dry_run, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                        recipe=args.recipe, precision=args.precision, strategy=args.strategy,
                        data_dir=args.data_dir, verbose=0 if args.quiet else 1)
    if args.dry_run:
        for r in results:
            block = f"block={r['block']} " if r["block"] else ""
            print(f"table {r['table']} | {r['label']} | {block}unit={r['unit']} shortcut={r['shortcut']} "
                  f"options={json.dumps(r['options'])} seed={r['seed']} | paper {r['paper_error'] or '-'} | "
                  f"{r['run_dir']}")
    else:
        print(open(os.path.join(args.run_dir, "results.md")).read())
    return 0


MAX_CONFIG_BYTES = 1 << 20  # a settings file; anything larger is not one


def read_config_file(path: str) -> dict:
    """The settings of a JSON or YAML file, with one-line errors naming the file (and the key)."""
    if not os.path.isfile(path):
        raise ValueError(f"`config` file not found. Received: config={path!r}")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ValueError(f"`config` file {path!r} is {os.path.getsize(path):,} bytes; a settings file is at most "
                         f"{MAX_CONFIG_BYTES:,}")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            # Aliases refused first: a few lines of nested aliases expand to gigabytes ("billion laughs").
            alias = next((e for e in yaml.parse(text, Loader=yaml.SafeLoader) if isinstance(e, yaml.AliasEvent)), None)
            if alias is not None:
                raise ValueError(f"`config` file {path!r} uses a YAML alias (*{alias.anchor}) at line "
                                 f"{alias.start_mark.line + 1}; write each setting out (aliases are not accepted)")
            values = yaml.safe_load(text)  # plain data only: a Python tag is refused
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}" if where else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"`config` file {path!r} is not valid plain YAML{line}: {problem}") from None
    else:
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ValueError(f"`config` file {path!r} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"`config` file {path!r} must hold a mapping of settings. "
                         f"Received: {type(values).__name__}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ValueError(f"Keys in `config` file {path!r} must be setting names (strings). Received: key {bad[0]!r}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def config_from_args(argv: Sequence[str], require: bool = False) -> TrainConfig:
    """The TrainConfig of a command line (and its --config file). `require`: a training run must name
    its dataset, model (or --init) and run directory (flags or --config), else usage and exit 2. Needs no Keras."""
    parser = _parser()
    return _train_config(parser.parse_args(["train", *argv]), require, parser)[0]


def _train_config(namespace: argparse.Namespace, require: bool, parser) -> tuple[TrainConfig, bool, set]:
    """(TrainConfig, --verbose, the settings given) of the parsed `train` command: flags over its --config
    file over the recipe."""
    args = vars(namespace)
    args.pop("command")
    verbose = args.pop("verbose", False)
    source = f"`config` file {args['config']!r}" if "config" in args else "the command line"
    values = read_config_file(args.pop("config")) if "config" in args else {}
    if isinstance(values.get("boundaries"), list):
        values["boundaries"] = tuple(values["boundaries"])
    options = dict(args.pop("options", []))
    if options:
        values["variant_options"] = {**values.get("variant_options", {}), **options}
    if args.pop("quiet", False):
        values["verbose"] = 0
    if "epochs" in args or "steps" in args:
        values.pop("epochs", None)
        values.pop("steps", None)
    values.update(args)
    config = TrainConfig.from_dict(values, source)  # values and types first, then what is missing
    missing = [name for name in REQUIRED if name not in values and not (name == "model" and values.get("init"))]
    if require and missing:
        parser.commands["train"].error("the following arguments are required: "
                     + ", ".join("--" + name.replace("_", "-") for name in missing) + " (as flags or in --config)")
    return config, verbose, set(values)


class Training(NamedTuple):
    """A checked training run: its settings and, for a fine-tuning run, SOURCE as the checks read it."""

    config: TrainConfig
    source: Any  # finetune.Source | None (finetune is imported with the plan: --help stays light)


def _stopped_training(job: Training) -> str:
    """Where a Ctrl-C or SIGTERM left a training run, and how to go on."""
    from keras_resnet_v2.training.callbacks import read_history
    from keras_resnet_v2.training.resume import backup_epoch

    config = job.config
    try:
        rows = read_history(os.path.join(config.run_dir, "history.csv"))
    except ValueError:
        rows = []
    # The rerun resumes from the newest backup: a stop between an epoch's history row and its backup
    # trains that epoch again, so the message names the backup's epoch, not the last row's.
    epoch = backup_epoch(config.run_dir)
    steps = [row["step"] for row in rows if row["epoch"] == epoch]
    done = (f"after epoch {epoch}" + (f" (step {steps[-1]})" if steps else "") if epoch is not None
            else "before the first epoch ended")
    return (f"{interrupts.describe()} {done}; rerun the same command to resume from "
            f"{os.path.join(config.run_dir, 'backup')}")


def _train(job: Training) -> int:
    from keras_resnet_v2.training.runner import run

    print(json.dumps(run(job.config, job.source), indent=2, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from keras_resnet_v2.training.evaluation import evaluate

    result = evaluate(args.model, args.dataset, args.data_dir, args.batch_size, args.eval_size,
                      args.crop_fraction, args.interpolation)
    # Printed as the paper reports: errors in percent to two decimals.
    print(json.dumps({k: round(v, 2 if k.endswith("_percent") else 4) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=2))
    return 0


def _plan_training(args: argparse.Namespace, parser) -> tuple[Training, bool, str]:
    from keras_resnet_v2.training import finetune

    config, verbose, given = _train_config(args, True, parser)
    source = finetune.prepare(config, given)  # --init: SOURCE's network and preprocessing, before any TensorFlow
    check_settings(config)
    if source is not None:
        frozen = f" (frozen: {config.freeze})" if config.freeze != "none" else ""
        what = f"fine-tuning {config.model} from {config.init}{frozen}"
    else:
        block = f", {config.block} units" if config.block else ""
        what = f"training {config.model} ({config.unit}, {config.shortcut}{block})"
    return Training(config, source), verbose, f"{what} on {config.dataset} into {config.run_dir}"


def _plan_evaluation(args: argparse.Namespace, parser) -> tuple[argparse.Namespace, bool, str]:
    model_file(args.model)
    return args, args.verbose, f"error of {args.model} on the {args.dataset} test split"


def _plan_sweep(args: argparse.Namespace, parser) -> tuple[argparse.Namespace, bool, str]:
    return args, args.verbose, f"table {args.table}, {args.model} on {args.dataset}, into {args.run_dir}"


def _stopped_sweep(args: argparse.Namespace) -> str:
    return (f"{interrupts.describe()}; finished rows are kept in {args.run_dir}: rerun the same command to go on "
            "with the interrupted row")


@dataclass(frozen=True)
class Command:
    """One sub-command: `plan` checks its arguments (no TensorFlow) into (job, verbose, what runs),
    `execute` runs the job, `stopped` says where a Ctrl-C or SIGTERM left it."""

    title: str
    plan: Callable[[argparse.Namespace, argparse.ArgumentParser], tuple[Any, bool, str]]
    execute: Callable[[Any], int]
    stopped: Callable[[Any], str]


COMMANDS = {
    "train": Command("resnet-v2-train", _plan_training, _train, _stopped_training),
    "evaluate": Command("resnet-v2-train evaluate", _plan_evaluation, _evaluate, lambda args: interrupts.describe()),
    "sweep": Command("resnet-v2-train sweep", _plan_sweep, _sweep, _stopped_sweep),
}


def main(argv: Sequence[str] | None = None) -> int:
    """`resnet-v2-train`: arguments parsed and checked first (no TensorFlow yet: usage errors exit 2
    at once), then one line saying what runs, then TensorFlow, started quietly.

    From its first line SIGTERM stops a run as Ctrl-C does and no signal prints a traceback
    (`plumbing.interrupts`): the command ends with one line saying where it stopped, at once or, where
    Python could not raise the interrupt, at the next training step or when the job returns.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    with interrupts.stop_on_signals():
        try:
            parser = _parser()
            args = parser.parse_args(_command_line(argv))
            command = COMMANDS[args.command]
            try:
                job, verbose, plan = command.plan(args, parser)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            announce(command.title, f"{plan}; starting TensorFlow")
            start_backend(verbose)
            interrupts.raise_if_stopped()
        except KeyboardInterrupt:
            print(f"\n{interrupts.describe()}", file=sys.stderr)
            return interrupts.exit_code()
        return _execute(command, job)


def _execute(command: Command, job) -> int:
    from keras_resnet_v2.plumbing.files import DirectoryBusyError, describe_os_error
    from keras_resnet_v2.training.data import DatasetError
    from keras_resnet_v2.training.loop import NonFiniteLossError
    from keras_resnet_v2.training.runner import DiskFullError
    from keras_resnet_v2.training.runtime import WORKER_LOST_EXIT_CODE, WorkerLostError

    try:  # --export-dir needs the export extra; without it no VerificationError can occur
        from keras_resnet_v2.export import VerificationError
    except ImportError:
        VerificationError = ()  # noqa: N806 - an except clause that matches nothing

    try:
        code = command.execute(job)
        interrupts.raise_if_stopped()  # a signal whose KeyboardInterrupt Python could not raise where it came
        return code
    except (ValueError, DatasetError, FileExistsError, DirectoryBusyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except VerificationError as error:  # the trained model is saved; nothing was published
        print(f"error: {error}", file=sys.stderr)
        return 5
    except DiskFullError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 4
    except WorkerLostError as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Every file is written (atomically) or not at all. TensorFlow's runtime is left waiting on the lost
        # worker: its shutdown would wait for it again and log its own lines, so the process ends here.
        os._exit(WORKER_LOST_EXIT_CODE)
    except OSError as error:
        print(f"\nerror: {describe_os_error(error)}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print(f"\n{command.stopped(job)}", file=sys.stderr)
        return interrupts.exit_code()
