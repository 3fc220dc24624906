"""`resnet-v2-train sweep` (issue 6): the paper's table rows as runs, resumable, with results files."""

import csv
import json
import os

import pytest

from conftest import message_lines
from keras_resnet_v2.training.cli import main
from keras_resnet_v2.training.sweep import PAPER_ERRORS, TABLES, plan


def test_dry_run_lists_table1_with_the_papers_options(tmp_path, capsys):
    run_dir = tmp_path / "t1"
    assert main(["sweep", "--table", "1", "--seeds", "2", "--dry-run", "--run-dir", str(run_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 * 2  # Paper, Table 1: ten rows, two seeds each
    gated = [line for line in lines if "exclusive_gating" in line and '"gate_bias": -6.0' in line]
    assert len(gated) == 2 and all("paper 8.70" in line for line in gated)
    assert any('"shortcut_scale": 0.5, "scale_residual": false' in line and "paper fail" in line for line in lines)
    assert all("unit=original" in line for line in lines)  # Table 1 varies the shortcut of original units
    assert not run_dir.exists()  # a dry run writes nothing


def test_plan_carries_the_papers_errors():
    table2 = {e["row"]: e["paper_error"] for e in plan(2, "resnet164", "cifar10", 1, "runs")}
    assert table2 == {"a_original": "5.93", "b_bn_after_addition": "6.50", "c_relu_before_addition": "6.14",
                      "d_relu_only_preact": "5.91", "e_full_preact": "5.46"}
    table3 = {e["row"]: e["paper_error"] for e in plan(3, "resnet1001", "cifar100", 1, "runs")}
    assert table3 == {"original": "27.82", "full_preact": "22.71"}
    assert all(e["paper_error"] == "" for e in plan(2, "resnet56", "cifar10", 1, "runs"))
    assert len(PAPER_ERRORS) == 10 + 2 * 5 + 5 * 2 + 2 and {len(rows) for rows in TABLES.values()} == {10, 5, 4}
    # Table 3's first line, ResNet-110 with 1-layer skips: only for --model resnet110.
    table3 = {e["row"]: (e["block"], e["unit"], e["paper_error"]) for e in plan(3, "resnet110", "cifar10", 1, "runs")}
    assert table3 == {"single_original": ("single", "original", "9.90"),
                      "single_full_preact": ("single", "full_preact", "8.91"),
                      "original": (None, "original", "6.61"), "full_preact": (None, "full_preact", "6.37")}
    with pytest.raises(ValueError, match="`table` must be one of"):
        plan(4, "resnet110", "cifar10", 1, "runs")


def test_bad_row_settings_fail_before_any_run(tmp_path, capsys):
    run_dir = tmp_path / "bad"
    assert main(["sweep", "--table", "2", "--model", "resnet165", "--steps", "2", "--run-dir", str(run_dir)]) == 2
    assert "depth" in capsys.readouterr().err and not run_dir.exists()


# Slow tier (14 s here): the fast tier keeps the sweep's plan, its dry runs and its checks before any run.
@pytest.mark.slow
def test_sweep_runs_rows_and_seeds_writes_results_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "t3"
    args = ["sweep", "--table", "3", "--dataset", "digits", "--model", "resnet8", "--steps", "4",
            "--batch-size", "32", "--seeds", "2", "--run-dir", str(run_dir), "--quiet"]
    assert main(args) == 0
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["row"], r["seed"]) for r in rows] == [("original", "0"), ("original", "1"),
                                                     ("full_preact", "0"), ("full_preact", "1")]
    for r in rows:
        history = list(csv.DictReader(open(os.path.join(r["run_dir"], "history.csv"))))
        assert r["status"] == "finished" and int(r["steps"]) == 4
        assert float(r["final_train_loss"]) == pytest.approx(float(history[-1]["loss"]))
        assert 0 <= float(r["test_error"]) <= 100
    table = (run_dir / "results.md").read_text()
    assert "| original | original |" in table and "| pre-activation | full_preact |" in table and "±" in table
    assert (run_dir / "curves.png").stat().st_size > 10_000
    # A rerun finds every row finished and trains nothing.
    stamps = {r["run_dir"]: os.path.getmtime(os.path.join(r["run_dir"], "sweep_result.json")) for r in rows}
    assert main(args) == 0
    assert all(os.path.getmtime(os.path.join(d, "sweep_result.json")) == t for d, t in stamps.items())
    assert json.loads(open(os.path.join(rows[0]["run_dir"], "sweep_result.json")).read())["steps"] == 4
    assert "pre-activation" in capsys.readouterr().out
    # Other settings into the same folder: refused before anything trains, naming what changed
    # (results.md would otherwise head resnet14 over ResNet-8's rows).
    other = [a if a != "resnet8" else "resnet14" for a in args]
    other[other.index("--steps") + 1] = "5"
    assert main(other) == 2
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and "holds a result trained with other settings" in err[0], err
    assert "model: 'resnet8' -> 'resnet14'" in err[0] and "steps: 4 -> 5" in err[0], err
    assert all(os.path.getmtime(os.path.join(d, "sweep_result.json")) == t for d, t in stamps.items())
    assert "resnet8" in (run_dir / "results.md").read_text()


def test_table3_dry_run_lists_the_one_layer_skip_rows_for_resnet110(tmp_path, capsys):
    assert main(["sweep", "--table", "3", "--model", "resnet110", "--dry-run", "--run-dir", str(tmp_path / "t3")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    single = [line for line in lines if "block=single" in line]
    assert len(single) == 2 and "paper 9.90" in single[0] and "paper 8.91" in single[1]
    assert main(["sweep", "--table", "3", "--model", "resnet164", "--dry-run", "--run-dir", str(tmp_path / "x")]) == 0
    assert "block=single" not in capsys.readouterr().out
