"""Saved maps: continue one with a new recording (map.load_path / --resume), localize in one
without changing it (mapping.mode localization), and refuse corrupt or foreign folders.

The scene is the analytic room of ``mapping_scene`` filmed along 1.5 turns of a loop. The
first session maps frames 0-39; the second starts at frame 36, inside the mapped part, with
a clock that starts elsewhere, so it must be found in the saved map before it can go on.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mapping_scene import BoxRoom, camera, loop_trajectory, quick_rgbd_config
from recon_ros.cli import main as cli_main
from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.mapping.frame import Frame
from recon_ros.mapping.frontend import RELOCALIZED
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
from recon_ros.mapping.saved_map import MAP_VERSION, load_map

W, H = 320, 240
N = 72  # 1.5 turns, 7.5 degrees per frame
DT_NS = 33_333_333


@pytest.fixture(scope="module")
def loop():
    room, K = BoxRoom(), camera(W, H)
    poses = loop_trajectory(N, radius=0.5, turns=1.5)
    cache: dict = {}

    def render(i: int):
        if i not in cache:
            cache[i] = room.render(K, poses[i], W, H)
        return cache[i]

    return K, poses, render


def _config(load_path: str = "", mode: str = "mapping") -> ReconConfig:
    return quick_rgbd_config(**{"map.load_path": load_path, "mapping.mode": mode})


def _run(recon: Reconstructor, loop, frames, t0_ns: int) -> list:
    """(frame index, tracking state, pose or None) of every frame."""
    K, _, render = loop
    out = []
    for n, i in enumerate(frames):
        rgb, depth = render(i)
        step = recon.process(Frame(stamp_ns=t0_ns + n * DT_NS, rgb=rgb, K=K, depth=depth, index=i))
        out.append((i, step.tracking, step.estimates[0].T_world_cam if step.estimates else None))
    return out


def _max_error(loop, results) -> float:
    """Largest camera position error in the first session's world (frame 0's camera)."""
    poses = loop[1]
    errs = [np.linalg.norm((poses[0] @ T)[:3, 3] - poses[i][:3, 3]) for i, _, T in results if T is not None]
    return float(max(errs))


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_map(loop, tmp_path_factory):
    """The first session's map folder (frames 0-39)."""
    recon = Reconstructor(_config())
    res = _run(recon, loop, range(0, 40), 0)
    assert all(T is not None for _, _, T in res)
    out = tmp_path_factory.mktemp("maps") / "first"
    recon.save(out)
    return out, recon.surface.volume.n, len(recon.keyframes())


@pytest.mark.slow
def test_resume_continues_the_saved_map(loop, first_map, tmp_path):
    """The second session is located in the saved map at its first frame, tracks on in the
    saved frame (error < 2 cm, as the first session), and its saved map holds both
    sessions' keyframes; the loaded map folder is left as it was."""
    folder, blocks, n_kf = first_map
    before = _digest(folder)
    recon = Reconstructor(_config(str(folder)))
    assert recon.surface.volume.n == blocks and len(recon.keyframes()) == n_kf
    res = _run(recon, loop, range(36, N), 10**12)
    assert res[0][1] == RELOCALIZED
    assert all(T is not None for _, _, T in res)
    assert _max_error(loop, res) < 0.02
    kfs = recon.keyframes()
    assert len(kfs) > n_kf and len({kf.id for kf in kfs}) == len(kfs)  # ids continue
    assert len(recon.trajectory()) == N - 36  # this session's frames
    assert recon.surface.volume.n > blocks  # the second half-turn added surface
    recon.save(tmp_path / "both")
    again = load_map(tmp_path / "both")
    assert len(again.keyframes) == len(kfs)
    assert _digest(folder) == before


@pytest.mark.slow
def test_localization_mode_leaves_the_map_unchanged(loop, first_map):
    """Localization: every frame is located (error < 2 cm), nothing enters the volume or the
    keyframes, and the folder's files are byte-identical afterwards."""
    folder, blocks, n_kf = first_map
    before = _digest(folder)
    recon = Reconstructor(_config(str(folder), mode="localization"))
    volume = recon.surface.export_volume()
    res = _run(recon, loop, range(10, 40), 5 * 10**12)
    assert res[0][1] == RELOCALIZED
    assert all(T is not None for _, _, T in res)
    assert _max_error(loop, res) < 0.02
    after = recon.surface.export_volume()
    assert recon.surface.volume.n == blocks
    assert all(np.array_equal(volume[k], after[k]) for k in ("coords", "tsdf", "weight", "color"))
    assert len(recon.keyframes()) == n_kf
    assert recon.frontend.stats()["reloc_keyframes"] == len(load_map(folder).relocalization["ids"])
    assert _digest(folder) == before


def test_localization_needs_a_map():
    with pytest.raises(UserInputError, match="map.load_path"):
        Reconstructor(_config(mode="localization"))


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def _corruptions(folder: Path):
    """(name, edit) pairs that each spoil a copy of a map folder in one way."""
    def version(p: Path):
        mf = p / "state" / "manifest.json"
        m = json.loads(mf.read_text())
        m["version"] = MAP_VERSION + 1
        mf.write_text(json.dumps(m))

    def truncate(p: Path):
        f = p / "state" / "volume.npz"
        f.write_bytes(f.read_bytes()[:1000])

    def flip(p: Path):
        f = sorted((p / "keyframes").glob("*.npz"))[0]
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))

    def missing(p: Path):
        (p / "state" / "relocalization.npz").unlink()

    def foreign(p: Path):
        (p / "state" / "manifest.json").write_text('{"format": "something else"}')

    def no_state(p: Path):
        import shutil
        shutil.rmtree(p / "state")

    return [("version", version, "format version"), ("truncated", truncate, "checksum"),
            ("bit flip", flip, "checksum"), ("missing file", missing, "missing"),
            ("foreign", foreign, "not a recon_ros map"), ("no state", no_state, "not a resumable")]


def test_bad_map_folders_give_one_line_errors(first_map, tmp_path):
    folder = first_map[0]
    for name, edit, message in _corruptions(folder):
        bad = _copy(folder, tmp_path / name.replace(" ", "_"))
        edit(bad)
        with pytest.raises(DataFormatError, match=message) as info:
            Reconstructor(_config(str(bad)))
        assert "\n" not in str(info.value), name


def test_replay_resume_errors_exit_2_and_write_nothing(first_map, jazzy_bag, tmp_path, capsys):
    """`recon-ros replay --resume` with a corrupt map or onto the map folder itself: one
    line on stderr, exit status 2, no output folder, the map untouched."""
    bad = _copy(first_map[0], tmp_path / "bad")
    (bad / "state" / "volume.npz").write_bytes(b"not a zip")
    before = _digest(bad)
    out = tmp_path / "out"
    code = cli_main(["replay", str(jazzy_bag), "--resume", str(bad),  # frontend from the map
                     "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "corrupt" in err[0]
    assert not out.exists()
    code = cli_main(["replay", str(jazzy_bag), "--frontend", "rgbd", "--resume", str(bad),
                     "--out", str(bad), "--no-progress"])
    assert code == 2 and "is the map being loaded" in capsys.readouterr().err
    assert _digest(bad) == before


def test_spann3r_map_cannot_be_resumed_by_rgbd(first_map, tmp_path):
    """A map made by another frontend names the frontend to use."""
    other = _copy(first_map[0], tmp_path / "other")
    mf = other / "state" / "manifest.json"
    m = json.loads(mf.read_text())
    m["frontend"] = "spann3r"
    mf.write_text(json.dumps(m))
    with pytest.raises(UserInputError, match="--frontend spann3r"):
        Reconstructor(_config(str(other)))


def test_node_loads_the_map_on_configure(first_map, tmp_path):
    """The node parameter map.load_path loads on configure (with the real core, behind the
    rclpy stand-in); a corrupt map fails configure with a one-line error and the node stays
    unconfigured."""
    from rclpy_standin import installed

    folder, blocks, _ = first_map
    bad = _copy(folder, tmp_path / "bad")
    (bad / "state" / "relocalization.npz").write_bytes(b"garbage")
    with installed():
        from rclpy.parameter import Parameter

        import recon_ros.ros.recon_node as recon_node

        def node_for(path: Path):
            ov = {"frontend.name": "rgbd", "map.load_path": str(path), "mapping.mode": "localization",
                  "map.voxel_size_m": 0.04, "save.on_shutdown": False}
            return recon_node.ReconNode(parameter_overrides=[Parameter(name=k, value=v) for k, v in ov.items()])

        node = node_for(folder)
        assert node.trigger_configure() == 97  # success
        assert node._recon.surface.volume.n == blocks and node._recon.localizing
        node.trigger_cleanup()
        node = node_for(bad)
        assert node.trigger_configure() == 98  # failure
        assert node.state_label == "unconfigured"
        errors = [m for m in node.get_logger().messages("error") if "corrupt" in m]
        assert len(errors) == 1 and "\n" not in errors[0]


@pytest.mark.slow
def test_resume_outside_the_saved_map_maps_on_in_a_segment(loop, tmp_path):
    """A recording that starts where the saved map has never looked is lost at first; after
    relocalization.new_segment_after_s it maps on in a new segment, which joins the saved map
    once the camera sees the saved part: the whole trajectory ends in the saved map's frame."""
    first = Reconstructor(_config())
    _run(first, loop, range(0, 20), 0)
    first.save(tmp_path / "quarter")
    cfg = _config(str(tmp_path / "quarter"))
    cfg.relocalization.new_segment_after_s = 0.1
    recon = Reconstructor(cfg)
    frames = list(range(30, 60))  # 225 degrees on: unseen until frame 48 (= frame 0)
    res = _run(recon, loop, frames, 10**12)
    recon.flush()
    assert res[0][1] == "lost" and res[0][2] is None
    st = recon.frontend.stats()
    assert st["segments"] == 1 and st["segment_joins"] == 1
    poses = dict(recon.trajectory())
    by_stamp = {10**12 + n * DT_NS: i for n, i in enumerate(frames)}
    corrected = [(by_stamp[s], "", T) for s, T in poses.items()]
    assert len(corrected) >= len(frames) - 5
    assert _max_error(loop, corrected) < 0.02


def test_volume_round_trip_gives_the_same_surface(loop):
    """export_volume -> load_volume restores the surface (points, colours, the minimum-weight
    rule's counts) up to the colour rounding of the saved format."""
    from recon_ros.mapping.surface_map import SurfaceMap

    K, poses, render = loop
    cfg = _config().map
    a = SurfaceMap(cfg)
    for i in range(0, 12, 2):
        rgb, depth = render(i)
        a.integrate_depth(i, depth, rgb, np.ones_like(depth), K, np.linalg.inv(poses[0]) @ poses[i])
    b = SurfaceMap(cfg)
    b.load_volume(a.export_volume())
    assert b.volume.n == a.volume.n
    pa, pb = a.points(), b.points()
    assert len(pa[0]) == len(pb[0]) > 1000
    oa, ob = np.lexsort(pa[0].T), np.lexsort(pb[0].T)
    np.testing.assert_allclose(pb[0][ob], pa[0][oa], atol=1e-5)  # xyz
    assert np.abs(pb[2][ob].astype(int) - pa[2][oa].astype(int)).max() <= 1  # rgb
    with pytest.raises(ValueError, match="shape"):
        b.load_volume({**a.export_volume(), "weight": np.zeros((1, 3))})
