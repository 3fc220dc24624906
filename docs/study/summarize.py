"""Tables for docs/reproduction.md from a finished study (docs/study/run_study.sh OUT_DIR).

    python docs/study/summarize.py runs/study > docs/study/summary.md

Per row of Tables 1 and 2: runs, test error %, final training loss (mean of the last epoch) and the
training loss after epoch 5 of 15 (how fast the row optimizes), each as mean ± sd over seeds; per
unit of the Fig. 1 runs: the per-step training loss averaged over steps 1-20 and the last 20 steps,
and ||dL/dx_l|| at the first and last unit at initialization and after training.
"""

import csv
import json
import os
import statistics
import sys

from keras_resnet_v2.training.sweep import PAPER_ERRORS


def mean_sd(values, fmt):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def history_loss(folder, run_dir, epoch):
    # The run's own folder inside OUT_DIR/table{T}/ (results.csv keeps the absolute path it ran at).
    with open(os.path.join(folder, os.path.basename(run_dir), "history.csv")) as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) == epoch]
    return float(rows[-1]["loss"]) if rows else None


def table(out, number):
    path = os.path.join(out, f"table{number}", "results.csv")
    if not os.path.exists(path):
        return
    with open(path) as f:
        results = list(csv.DictReader(f))
    print(f"### Table {number}, {results[0]['model']} on digits (test split: 360 images, one error = 0.28%)\n")
    print("| row | runs | test error % | train loss, epoch 5 | train loss, final | paper, ResNet-110 CIFAR-10 % |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for r in results:
        rows.setdefault(r["label"], []).append(r)
    for label, runs in rows.items():
        done = [r for r in runs if r["status"] == "finished"]
        diverged = sum(r["status"] == "diverged" for r in runs)
        count = f"{len(done)}" + (f" (+{diverged} diverged)" if diverged else "")
        early = [x for x in (history_loss(os.path.dirname(path), r["run_dir"], 5) for r in done) if x is not None]
        paper = PAPER_ERRORS.get((number, "cifar10", "resnet110", runs[0]["row"]), "-")  # the paper's ResNet-110
        print(f"| {label} | {count} | {mean_sd([float(r['test_error']) for r in done], '.2f')} | "
              f"{mean_sd(early, '.3f')} | {mean_sd([float(r['final_train_loss']) for r in done], '.4f')} | "
              f"{paper} |")
    print()


def fig1(out):
    folder = os.path.join(out, "fig1")
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name)) as f:
            data = json.load(f)
        steps = data["steps"]
        print(f"### {data['model']}, batch {data['batch_size']}, {steps} steps at lr 0.01, seed {data['seed']}\n")
        print("| unit | loss, steps 1-20 | loss, last 20 steps | ||dL/dx|| first / last unit, init | "
              f"same, after {steps} steps |")
        print("|---|---|---|---|---|")
        for unit, losses in data["training_loss"].items():
            ends = []
            for key in ("initialization", f"after {steps} steps"):
                norms = [v for n, v in data["gradient_norms"][f"{unit}, {key}"] if n != "input"]
                ends.append(f"{norms[0]:.3g} / {norms[-1]:.3g}")
            print(f"| {unit} | {statistics.mean(losses[:20]):.3f} | {statistics.mean(losses[-20:]):.3f} | "
                  f"{ends[0]} | {ends[1]} |")
        print()


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/study"
    table(out, 2)
    table(out, 1)
    fig1(out)
