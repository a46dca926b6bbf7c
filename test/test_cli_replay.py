"""`recon-ros synth` / `replay` / `config` as a user runs them, and their error messages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recon_ros.cli import main
from recon_ros.io.ply import read_ply
from recon_ros.io.trajectory import read_tum


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "scene"
    rc = main(["-q", "synth", str(out), "--no-progress", "--synth.width", "160", "--synth.height", "120",
               "--synth.n_frames", "12", "--synth.loops", "0.1", "--gt-spacing", "0.05"])
    assert rc == 0
    return out


def test_synth_writes_a_bag_with_ground_truth(synth_bag):
    assert (synth_bag / "metadata.yaml").is_file()
    gt = read_tum(synth_bag / "gt" / "gt_trajectory.tum")
    assert len(gt.stamps_ns) == 12
    assert len(read_ply(synth_bag / "gt" / "gt_surface.ply").points) > 1000


def test_replay_rgbd_writes_complete_outputs(synth_bag, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["-q", "replay", str(synth_bag), "--frontend", "rgbd", "--out", str(out), "--no-progress",
               "--map.voxel_size_m", "0.03"])
    assert rc == 0
    assert "12 frames" in capsys.readouterr().out
    traj = read_tum(out / "trajectory.tum")
    gt = read_tum(out / "gt_trajectory.tum")
    assert list(traj.stamps_ns) == list(gt.stamps_ns)
    ply = read_ply(out / "map.ply")
    assert len(ply.points) > 500 and ply.colors is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == 12 and not summary["interrupted"]
    assert summary["reconstructor"]["map_points"] == len(ply.points)
    assert "voxel_size_m: 0.03" in (out / "config.yaml").read_text()
    assert any((out / "keyframes").glob("*.npz"))
    # the output bag holds what RViz needs
    from rosbags.rosbag2 import Reader
    with Reader(out / "recon_bag") as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
    assert topics["/recon/pose"] == 12 and topics["/tf"] == 12 and topics["/tf_static"] == 1
    assert topics["/recon/map_cloud"] >= 1 and topics["/recon/path"] >= 1


def test_interrupted_replay_still_writes_valid_outputs(synth_bag, tmp_path):
    from recon_ros.config import set_value
    from recon_ros.io.sources import open_source
    from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
    from recon_ros.pipeline.replay import run_replay

    def interrupted(source, after):
        for i, frame in enumerate(source):
            if i == after:
                raise KeyboardInterrupt
            yield frame

    cfg = ReconConfig()
    set_value(cfg, "frontend.name", "rgbd")
    with open_source(synth_bag) as source:
        res = run_replay(Reconstructor(cfg), interrupted(source, 5), tmp_path / "r", progress=False)
    assert res.interrupted and res.frames_in == 5
    assert len(read_tum(tmp_path / "r" / "trajectory.tum").stamps_ns) == 5
    assert len(read_ply(tmp_path / "r" / "map.ply").points) > 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["interrupted"] is True
    assert not list((tmp_path / "r").glob(".*partial*"))


@pytest.mark.parametrize("argv, message", [
    (["replay", "/nonexistent/scene.bag"], "input not found"),
    (["replay", "{synth}", "--frontend", "spann3r"], "needs its weights"),
    (["replay", "{synth}", "--frontend", "rgbd", "--map.voxel_size_m", "-1"], "map.voxel_size_m"),
    (["replay", "{synth}", "--config", "/nonexistent.yaml"], "config file not found"),
    (["replay", "{garbage}"], "cannot open bag {garbage}: "),
])
def test_replay_errors_are_one_line(argv, message, synth_bag, tmp_path, capsys):
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x00not a bag" * 10)
    argv = [a.format(synth=synth_bag, garbage=garbage) for a in argv] + ["--out", str(tmp_path / "o"), "--no-progress"]
    message = message.format(garbage=garbage)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recon-ros replay: error:") and "\n" not in err and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "map.ply").exists()


def test_config_command_prints_loadable_yaml(tmp_path, capsys):
    from recon_ros.config import load_yaml
    from recon_ros.mapping.reconstructor import ReconConfig

    assert main(["config"]) == 0
    text = capsys.readouterr().out
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert load_yaml(ReconConfig, p) == ReconConfig()
    assert main(["config", "--node"]) == 0
    assert capsys.readouterr().out.startswith("/**:")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "replay", "synth", "convert", "eval", "config"):
        assert f"    {cmd}" in out


@pytest.mark.slow
def test_replay_with_refinement_writes_before_and_after(synth_bag, tmp_path):
    out = tmp_path / "ref"
    rc = main(["-q", "replay", str(synth_bag), "--frontend", "rgbd", "--out", str(out), "--no-progress",
               "--no-bag", "--refine", "--schedule.align_period_s", "0.1", "--schedule.refine_period_s", "0.2",
               "--keyframe.max_interval_s", "0.05", "--keyframe.min_interval_s", "0"])
    assert rc == 0
    before, after = read_tum(out / "trajectory_before.tum"), read_tum(out / "trajectory.tum")
    assert list(before.stamps_ns) == list(after.stamps_ns)
    assert len(read_ply(out / "map_before.ply").points) > 0
    runs = json.loads((out / "summary.json").read_text())["refinement"]
    assert {r["stage"] for r in runs} == {"align", "refine"}


@pytest.mark.slow
def test_replay_resume_continues_and_localizes(tmp_path):
    """`replay --resume` (the frontend taken from the map) relocalizes the first frame in the
    saved map; with --mapping.mode localization the map folder stays byte-identical."""
    import hashlib
    import json

    bag = tmp_path / "scene"
    assert main(["-q", "synth", str(bag), "--no-progress", "--synth.width", "320", "--synth.height", "240",
                 "--synth.n_frames", "16", "--synth.loops", "0.1", "--gt-spacing", "0.1"]) == 0
    first = tmp_path / "first"
    assert main(["-q", "replay", str(bag), "--frontend", "rgbd", "--out", str(first), "--no-progress",
                 "--no-bag", "--max-frames", "10"]) == 0
    assert (first / "state" / "manifest.json").is_file()

    def digest(folder):
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digest(first)
    for mode, out in (("mapping", tmp_path / "both"), ("localization", tmp_path / "loc")):
        assert main(["-q", "replay", str(bag), "--resume", str(first), "--out", str(out), "--no-progress",
                     "--no-bag", "--mapping.mode", mode]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["tracking"]["frames"].get("relocalized", 0) >= 1, summary["tracking"]
        assert summary["tracking"]["frames"].get("lost", 0) == 0
        assert summary["reconstructor"]["frontend_relocalizations"] >= 1
    assert digest(first) == before
    assert json.loads((tmp_path / "loc" / "summary.json").read_text())["reconstructor"]["keyframes"] == \
        json.loads((first / "summary.json").read_text())["reconstructor"]["keyframes"]
