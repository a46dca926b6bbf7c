"""``recon-ros synth`` bags are consistent for the nodes: the images' frame_id is the child of the
static TF chain base_link -> camera_link -> <optical frame> the bag carries, so that
``live.launch.py bag:=<synth bag> base_frame:=camera_link`` can resolve the camera's mounting."""
from __future__ import annotations

import numpy as np

from recon_ros.cli import main
from recon_ros.io.bag_reader import bag_typestore, open_bag_reader
from recon_ros.io.tf_buffer import TfBuffer


def test_synth_bag_frames_match_the_static_tf_chain(tmp_path):
    bag = tmp_path / "scene"
    assert main(["-q", "synth", str(bag), "--no-progress", "--synth.n_frames", "3"]) == 0
    reader = open_bag_reader(bag)
    store = bag_typestore(reader)
    tf = TfBuffer()
    frame_ids: dict[str, set] = {}
    try:
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/tf_static":
                tf.add_message(msg, static=True)
            elif hasattr(msg, "header") and conn.msgtype.startswith("sensor_msgs/"):
                frame_ids.setdefault(conn.topic, set()).add(msg.header.frame_id)
    finally:
        reader.close()
    assert "/camera/color/image_raw" in frame_ids and "/camera/color/camera_info" in frame_ids
    cams = set().union(*frame_ids.values())
    assert len(cams) == 1, frame_ids  # images, infos and depth share one camera frame
    cam = cams.pop()
    # the frame is a leaf of the static chain from base_link through camera_link
    assert ("camera_link", cam, True) in tf.edges(), tf.edges()
    assert ("base_link", "camera_link", True) in tf.edges(), tf.edges()
    T_link_cam = tf.lookup("camera_link", cam, 0)
    # camera_link is x forward, z up; the optical frame looks along +x of camera_link
    assert np.allclose(T_link_cam[:3, :3] @ [0, 0, 1], [1, 0, 0], atol=1e-9)
    assert tf.can_transform("base_link", cam, 0)
