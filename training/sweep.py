"""`resnet-v2-train sweep`: every row of the paper's Tables 1-3, one run directory per row and seed.

    resnet-v2-train sweep --table 2 --dataset cifar10 --model resnet110 --seeds 3 --run-dir runs/table2
    resnet-v2-train sweep --table 1 --dry-run --run-dir runs/table1

Rows are data (the paper's tables): Table 1 the shortcut variants of Fig. 2 on the original unit (ResNet-110),
Table 2 the unit variants of Fig. 4, Table 3 original against full pre-activation. Each run is
`keras_resnet_v2.training.run` in `RUN_DIR/table{T}_{row}_seed{S}` (a rerun skips finished rows and resumes an
interrupted one), then `RUN_DIR/results.csv`, `results.md` (mean and spread over seeds beside the
paper's error) and `curves.png` (training loss and test error against iterations, one colour per row,
like the paper's Figs. 1, 3 and 6) are rewritten from every finished run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field

from keras_resnet_v2.plumbing.files import atomic_write, atomic_write_text, read_json_object
from keras_resnet_v2.training import callbacks as cb


@dataclass(frozen=True)
class Row:
    key: str  # part of the run directory name
    label: str  # as the paper names it
    unit: str
    shortcut: str = "identity"
    options: dict = field(default_factory=dict)
    block: str | None = None  # CIFAR units (None: the paper's for the depth)
    models: tuple[str, ...] = ()  # the only --model values the row applies to (empty: any)


# (table) -> rows; paper errors (CIFAR-10 test error %, "fail" = above 20%) keyed by (dataset, model).
TABLES: dict[int, tuple[Row, ...]] = {
    1: (  # Fig. 2 / Table 1: ResNet-110, original units (f = ReLU), median of 5 runs in the paper
        Row("a_identity", "(a) identity", "original"),
        Row("b_scale_shortcut", "(b) constant scaling 0.5, F not scaled", "original", "constant_scaling",
            {"shortcut_scale": 0.5, "scale_residual": False}),
        Row("b_scale_both", "(b) constant scaling 0.5, F x0.5", "original", "constant_scaling",
            {"shortcut_scale": 0.5, "scale_residual": True}),
        Row("c_gating_bg0", "(c) exclusive gating, b_g 0", "original", "exclusive_gating", {"gate_bias": 0.0}),
        Row("c_gating_bg-6", "(c) exclusive gating, b_g -6", "original", "exclusive_gating", {"gate_bias": -6.0}),
        Row("c_gating_bg-7", "(c) exclusive gating, b_g -7", "original", "exclusive_gating", {"gate_bias": -7.0}),
        Row("d_shortcut_gating_bg0", "(d) shortcut-only gating, b_g 0", "original", "shortcut_only_gating",
            {"gate_bias": 0.0}),
        Row("d_shortcut_gating_bg-6", "(d) shortcut-only gating, b_g -6", "original", "shortcut_only_gating",
            {"gate_bias": -6.0}),
        Row("e_conv1x1", "(e) 1x1 conv shortcut", "original", "conv1x1"),
        Row("f_dropout", "(f) dropout shortcut 0.5", "original", "dropout", {"dropout_rate": 0.5}),
    ),
    2: (  # Fig. 4 / Table 2
        Row("a_original", "(a) original", "original"),
        Row("b_bn_after_addition", "(b) BN after addition", "bn_after_addition"),
        Row("c_relu_before_addition", "(c) ReLU before addition", "relu_before_addition"),
        Row("d_relu_only_preact", "(d) ReLU-only pre-activation", "relu_only_preact"),
        Row("e_full_preact", "(e) full pre-activation", "full_preact"),
    ),
    3: (  # Table 3; its first line, "ResNet-110 (1-layer skip)", has units of one 3x3 conv
        Row("single_original", "1-layer skip, original", "original", block="single", models=("resnet110",)),
        Row("single_full_preact", "1-layer skip, pre-activation", "full_preact", block="single",
            models=("resnet110",)),
        Row("original", "original", "original"),
        Row("full_preact", "pre-activation", "full_preact"),
    ),
}

PAPER_ERRORS: dict[tuple[int, str, str, str], str] = {
    **{(1, "cifar10", "resnet110", key): error for key, error in zip(
        [r.key for r in TABLES[1]],
        ["6.61", "fail", "12.35", "fail", "8.70", "9.81", "12.86", "6.91", "12.22", "fail"], strict=True)},
    **{(2, "cifar10", model, row.key): error for model, errors in (
        ("resnet110", ["6.61", "8.17", "7.84", "6.71", "6.37"]),
        ("resnet164", ["5.93", "6.50", "6.14", "5.91", "5.46"]))
       for row, error in zip(TABLES[2], errors, strict=True)},
    **{(3, dataset, model, key): error for dataset, model, pair in (
        ("cifar10", "resnet110", ("6.61", "6.37")), ("cifar10", "resnet164", ("5.93", "5.46")),
        ("cifar10", "resnet1001", ("7.61", "4.92")), ("cifar100", "resnet164", ("25.16", "24.33")),
        ("cifar100", "resnet1001", ("27.82", "22.71")))
       for key, error in zip(("original", "full_preact"), pair, strict=True)},
    (3, "cifar10", "resnet110", "single_original"): "9.90",
    (3, "cifar10", "resnet110", "single_full_preact"): "8.91",
}

COLUMNS = ["table", "row", "label", "model", "block", "unit", "shortcut", "options", "seed", "status", "steps",
           "final_train_loss", "test_error", "paper_error", "run_dir"]


def plan(table: int, model: str, dataset: str, seeds: int, run_dir: str) -> list[dict]:
    """The runs of a sweep, in order: one per row and seed."""
    if table not in TABLES:
        raise ValueError(f"`table` must be one of {sorted(TABLES)}. Received: table={table!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"`seeds` must be a positive integer. Received: seeds={seeds!r}")
    return [{"table": table, "row": row.key, "label": row.label, "model": model, "unit": row.unit,
             "shortcut": row.shortcut, "options": dict(row.options), "block": row.block, "seed": seed,
             "paper_error": PAPER_ERRORS.get((table, dataset, model.lower(), row.key), ""),
             "run_dir": os.path.join(run_dir, f"table{table}_{row.key}_seed{seed}")}
            for row in TABLES[table] if not row.models or model.lower() in row.models for seed in range(seeds)]


# Settings that do not change what a row measures, so a rerun with other values reuses its result.
NOT_IDENTITY = ("run_dir", "verbose", "data_dir", "export_dir", "export_formats", "strategy")


def _settings(config) -> dict:
    """What a row's result depends on (its TrainConfig, less NOT_IDENTITY), as JSON reads it back."""
    import dataclasses

    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IDENTITY},
                                 default=str))


def _finished(entry: dict, settings: dict) -> dict | None:
    """The recorded result of a row trained with `settings`; a one-line ValueError if it was trained otherwise."""
    path = os.path.join(entry["run_dir"], "sweep_result.json")
    if not os.path.isfile(path):
        return None
    outcome = read_json_object(path)
    recorded = outcome.get("settings")
    if recorded != settings:
        from keras_resnet_v2.training.config import changed_settings

        changed = ("no settings recorded (an older sweep)" if not isinstance(recorded, dict) else
                   changed_settings(recorded, settings, sorted(set(recorded) | set(settings))))
        raise ValueError(f"{path} holds a result trained with other settings ({changed}); its results.md would "
                         "mislabel it: use another --run-dir, or remove that row's folder to train it again")
    return outcome


def _outcome(entry: dict, status: str, test_accuracy: float | None) -> dict:
    rows = cb.read_history(os.path.join(entry["run_dir"], "history.csv"))
    return {"status": status, "steps": rows[-1]["step"] if rows else 0,
            "final_train_loss": rows[-1].get("loss", math.nan) if rows else math.nan,
            "test_error": 100 * (1 - test_accuracy) if test_accuracy is not None else math.nan}


def run_sweep(table: int, *, run_dir: str, dataset: str = "cifar10", model: str = "resnet110", seeds: int = 1,
              dry_run: bool = False, **train_settings) -> list[dict]:
    """Runs (or, with `dry_run`, lists) every row and seed of `table`; returns the result rows.

    `train_settings` are `TrainConfig` fields shared by every run (epochs or steps, batch_size,
    recipe, precision, strategy, data_dir, verbose, ...). A run whose loss becomes NaN or Inf is
    recorded with status `diverged` (the paper's "fail" rows may do that) and the sweep goes on.
    """
    from keras_resnet_v2.training.config import TrainConfig
    from keras_resnet_v2.training.loop import NonFiniteLossError
    from keras_resnet_v2.training.runner import check_config, run

    entries = plan(table, model, dataset, seeds, run_dir)
    configs = [TrainConfig(dataset=dataset, model=model, unit=e["unit"], shortcut=e["shortcut"], block=e["block"],
                           variant_options=e["options"], seed=e["seed"], run_dir=e["run_dir"], **train_settings)
               for e in entries]
    for config in configs:  # every row's settings are checked before the first run starts
        check_config(config)
    if dry_run:
        return entries
    results = []
    settings = [_settings(config) for config in configs]
    finished = [_finished(entry, s) for entry, s in zip(entries, settings, strict=True)]  # every row checked first
    for entry, config, row_settings, outcome in zip(entries, configs, settings, finished, strict=True):
        if outcome is None:
            try:
                test_accuracy = run(config)["test_accuracy"]
                outcome = _outcome(entry, "finished", test_accuracy)
            except NonFiniteLossError:
                outcome = _outcome(entry, "diverged", None)
            outcome["settings"] = row_settings
            atomic_write_text(os.path.join(entry["run_dir"], "sweep_result.json"), json.dumps(outcome))
        results.append({**entry, **{k: v for k, v in outcome.items() if k != "settings"}})
        write_results(results, run_dir)
    return results


def _mean_spread(values: list[float], fmt: str = ".2f") -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    mean, sd = statistics.mean(values), statistics.stdev(values)
    return f"{mean:{fmt}} ± {sd:{fmt}} (min {min(values):{fmt}}, max {max(values):{fmt}})"


def write_results(results: list[dict], run_dir: str) -> None:
    """results.csv (one line a run), results.md (one line a row) and curves.png in `run_dir`."""
    os.makedirs(run_dir, exist_ok=True)

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            for r in results:
                writer.writerow({k: json.dumps(r[k]) if k == "options" else "" if r.get(k) is None else r[k]
                                 for k in COLUMNS})

    atomic_write(os.path.join(run_dir, "results.csv"), write_csv)
    lines = ["| row | unit | shortcut | options | runs | final train loss | test error % (mean ± sd) | paper % |",
             "|---|---|---|---|---|---|---|---|"]
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    for runs in by_row.values():
        first = runs[0]
        diverged = sum(r["status"] == "diverged" for r in runs)
        count = f"{len(runs)}" + (f" ({diverged} diverged)" if diverged else "")
        lines.append(f"| {first['label']} | {first['unit']} | {first['shortcut']} | {json.dumps(first['options'])} | "
                     f"{count} | {_mean_spread([r['final_train_loss'] for r in runs], '.3g')} | "
                     f"{_mean_spread([r['test_error'] for r in runs])} | {first['paper_error'] or '-'} |")
    header = (f"Table {results[0]['table']}, {results[0]['model']}; " if results else "") + \
        ("test error of the final model; paper: He et al. 2016, Tables 1-3 (CIFAR-10 unless the dataset says "
         "otherwise).\n\n")
    atomic_write_text(os.path.join(run_dir, "results.md"), header + "\n".join(lines) + "\n")
    plot_sweep(results, os.path.join(run_dir, "curves.png"))


def plot_sweep(results: list[dict], png_path: str) -> None:
    """Training loss and test error against iterations, every run, one colour per row."""
    fig, (ax_loss, ax_err) = cb.subplots(1, 2, figsize=(12, 4.5))
    colours = {}
    for r in results:
        rows = cb.read_history(os.path.join(r["run_dir"], "history.csv"))
        if not rows:
            continue
        colour = colours.setdefault(r["row"], f"C{len(colours) % 10}")
        label = r["label"] if r["seed"] == results[0]["seed"] else None
        steps = [h["step"] for h in rows]
        ax_loss.plot(steps, [h.get("loss", math.nan) for h in rows], ".-", color=colour, label=label)
        ax_err.plot(steps, [100 * (1 - h.get("val_accuracy", math.nan)) for h in rows], ".-", color=colour)
    ax_loss.set(xlabel="iterations", ylabel="training loss", yscale="log")
    ax_err.set(xlabel="iterations", ylabel="test error (%)")
    ax_loss.legend(fontsize=7)
    cb.save_figure(fig, png_path)
