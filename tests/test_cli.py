"""`python -m keras_resnet_v2` describes a network, and reports bad input clearly."""

import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "keras_resnet_v2", *args],
                          capture_output=True, text=True, timeout=600)


def test_cli_describes_a_network():
    result = _run("20", "--unit", "original", "--shortcut", "shortcut_only_gating")  # ResNet-110 took 7 s here
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resnet20_original:" in result.stdout
    assert "stage1=3, stage2=3, stage3=3" in result.stdout
    assert "finite: True" in result.stdout and "output (2, 10)" in result.stdout


def test_cli_reports_a_bad_depth():
    result = _run("165")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()  # one line, before any backend starts
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "164 or 173" in lines[0] and "Received: depth=165" in lines[0]
