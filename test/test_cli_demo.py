"""`make demo` / `recon-ros demo`: a short run of the whole demo (synthetic scene -> online
reconstruction -> evaluation) through the Makefile target and the command, judged on its report."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recon_ros.cli import main
from recon_ros.io.ply import read_ply
from recon_ros.io.trajectory import read_tum

REPO = Path(__file__).resolve().parents[1]
# an eighth of the default loop in 15 frames: the default's motion per frame, at a quarter of its pixels
SHORT = ["--frames", "15", "--loops", "0.125", "--size", "160x120", "--no-progress"]


@pytest.mark.slow
def test_make_demo_short_run(tmp_path):
    out = tmp_path / "demo"
    args = SHORT + ["--out", str(out)]
    if shutil.which("make"):
        # the Makefile target itself, with this interpreter standing in for the virtual environment
        venv = tmp_path / "venv"
        cmd = ["make", "-s", "-C", str(REPO), "-o", f"{venv}/.installed", "demo", f"VENV={venv}",
               f"PY={sys.executable}", "DEMO_ARGS=" + " ".join(args)]
    else:  # no make here: the command the target runs
        cmd = [sys.executable, "-m", "recon_ros.cli", "demo"] + args
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for step in ("[1/3] synthetic scene: 15 frames at 160x120", "[2/3] online reconstruction with the rgbd",
                 "[3/3] evaluation against the ground truth", "ATE rmse =", "map (PLY)"):
        assert step in text, text
    assert "tracking failed" not in proc.stderr
    report = json.loads((out / "eval" / "report.json").read_text())
    tr, surf = report["trajectory"], report["surface"]
    assert tr["n_matched"] == 15 and tr["align"] == "se3"
    assert 0.5 < tr["gt_length_m"] < 0.8  # an eighth of the loop
    assert tr["ate_trans_m"]["rmse"] < 0.01 * tr["gt_length_m"]
    # 1 cm depth noise; after 15 frames the minimum-readings rule still leaves the edges of the
    # view out of the map, so completion is looser than accuracy
    assert surf["accuracy_mean_m"] < 0.025 and surf["completion_mean_m"] < 0.06
    assert len(read_tum(out / "recon" / "trajectory.tum").stamps_ns) == 15
    assert len(read_ply(out / "recon" / "map.ply").points) > 10_000
    assert (out / "recon" / "recon_bag" / "metadata.yaml").is_file() and len(report["plots"]) >= 4


@pytest.mark.parametrize("argv, message", [
    (["--frames", "5"], "--frames must be at least 10"),
    (["--loops", "0"], "loops"),
    (["--size", "12"], "size"),
])
def test_demo_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--no-progress"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recon-ros demo: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()
