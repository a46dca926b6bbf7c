"""Rebuild test/data from the original fixture folders (see test/data/README.md).

    python test/data/make_test_data.py SPANN3R_DIR BAG_DIR [--frames N]

- Spann3R parity set (SPANN3R_DIR): every ``.npz`` is rewritten array for array, unchanged
  (same keys, dtypes, shapes and bytes; float32 stays float32), into a zip whose entries are
  LZMA-compressed instead of deflated. ``numpy.load`` reads it as any ``.npz`` (it opens the zip
  with :mod:`zipfile`). The ``.pt`` and ``.json`` files and the README are copied as they are.
- ROS 2 bag (BAG_DIR, an MCAP rosbag2 folder recorded by ``ros2 bag record``): the messages whose
  header stamp is within the first N colour frames (and every ``/tf_static`` message) are copied
  into a zstd-chunked MCAP. Schema, channel, message and metadata records keep their content
  byte for byte (same ids, sequence numbers, receive/publish times, CDR payloads): only the chunk
  compression, the chunk boundaries and the index change. The message counts and the duration in
  ``metadata.yaml`` and in the file's ``rosbag2`` metadata record are updated to the kept
  messages; nothing else in them is touched. ``gt/`` is copied unchanged.

This is a maintenance tool, not part of the test suite; it needs the ``mcap`` and ``zstandard``
packages (installed with the ``test`` extra).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ZSTD_LEVEL = 19
CHUNK_SIZE = 4 * 1024 * 1024


def rewrite_npz(src: Path, dst: Path) -> None:
    """Same arrays, LZMA-compressed zip entries; written to a temporary name, then renamed."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    tmp = dst.with_name(dst.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
    with np.load(tmp, allow_pickle=False) as back:  # verify before it takes the final name
        assert sorted(back.files) == sorted(arrays)
        for key, arr in arrays.items():
            got = back[key]
            assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes(), key
    os.replace(tmp, dst)


def copy_spann3r(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.suffix == ".npz":
            rewrite_npz(p, dst / p.name)
        elif p.is_file():
            shutil.copyfile(p, dst / p.name)


def _header_stamp_ns(cdr: bytes) -> int:
    """std_msgs/Header stamp of a CDR message that starts with a header (4-byte encapsulation)."""
    sec, nsec = struct.unpack_from("<iI" if cdr[1] == 1 else ">iI", cdr, 4)
    return sec * 1_000_000_000 + nsec


def _patch_metadata(text: str, counts: dict, total: int, start_ns: int, duration_ns: int) -> str:
    """Set the message counts, starting time and duration of a rosbag2 metadata YAML, editing
    only those numbers in the text (layout, QoS strings and everything else stay as written).

    A ``message_count`` that follows a topic's ``name`` is that topic's count; the others (bag
    and file) are the total.
    """
    out, topic = [], None
    for line in text.split("\n"):
        m = re.match(r"(\s*)(name|message_count|nanoseconds|nanoseconds_since_epoch): (\S+)$", line)
        if m:
            indent, key, value = m.groups()
            if key == "name":
                topic = value
            elif key == "message_count":
                line = f"{indent}{key}: {counts[topic] if topic is not None else total}"
                topic = None
            elif key == "nanoseconds" and out and out[-1].strip() == "duration:":
                line = f"{indent}{key}: {duration_ns}"
            elif key == "nanoseconds_since_epoch" and out and out[-1].strip() == "starting_time:":
                line = f"{indent}{key}: {start_ns}"
        out.append(line)
    return "\n".join(out)


def copy_bag(src: Path, dst: Path, frames: int) -> None:
    import zstandard
    from mcap import writer as mcap_writer
    from mcap.records import Attachment, Channel, Header, Message, Metadata, Schema
    from mcap.stream_reader import StreamReader

    (mcap_src,) = sorted(src.glob("*.mcap"))
    with open(mcap_src, "rb") as fh:
        records = list(StreamReader(fh).records)
    if any(isinstance(r, Attachment) for r in records):
        raise SystemExit("attachments are not copied by this tool")
    header = next(r for r in records if isinstance(r, Header))
    schemas = {r.id: r for r in records if isinstance(r, Schema)}
    channels = {r.id: r for r in records if isinstance(r, Channel)}
    messages = [r for r in records if isinstance(r, Message)]
    colour = next(i for i, c in channels.items() if c.topic.endswith("color/image_raw"))
    colour_stamps = sorted(_header_stamp_ns(m.data) for m in messages if m.channel_id == colour)
    last = colour_stamps[frames - 1]
    keep = [m for m in messages
            if channels[m.channel_id].topic == "/tf_static" or _header_stamp_ns(m.data) <= last]
    counts = {}
    for m in keep:
        counts[channels[m.channel_id].topic] = counts.get(channels[m.channel_id].topic, 0) + 1
    start = min(m.log_time for m in keep)
    duration = max(m.log_time for m in keep) - start

    class _Zstd:  # the writer compresses chunks with zstandard.compress(data); use a higher level
        @staticmethod
        def compress(data: bytes) -> bytes:
            return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)

    dst.mkdir(parents=True, exist_ok=True)
    out_path = dst / mcap_src.name
    tmp = out_path.with_name(out_path.name + ".tmp")
    saved = mcap_writer.zstandard
    mcap_writer.zstandard = _Zstd
    try:
        with open(tmp, "wb") as out:
            w = mcap_writer.Writer(out, chunk_size=CHUNK_SIZE, compression=mcap_writer.CompressionType.ZSTD)
            w.start(header.profile, header.library)
            for i in sorted(schemas):
                s = schemas[i]
                assert w.register_schema(s.name, s.encoding, s.data) == i
            for i in sorted(channels):
                c = channels[i]
                assert w.register_channel(c.topic, c.message_encoding, c.schema_id, c.metadata) == i
            kept = set(map(id, keep))
            for r in records:
                if isinstance(r, Message) and id(r) in kept:
                    w.add_message(r.channel_id, r.log_time, r.data, r.publish_time, r.sequence)
                elif isinstance(r, Metadata):
                    data = dict(r.metadata)
                    if "serialized_metadata" in data and "message_count: 0\n" not in data["serialized_metadata"]:
                        data["serialized_metadata"] = _patch_metadata(
                            data["serialized_metadata"], counts, len(keep), start, duration)
                    w.add_metadata(r.name, data)
            w.finish()
    finally:
        mcap_writer.zstandard = saved
    os.replace(tmp, out_path)
    meta = (src / "metadata.yaml").read_text()
    (dst / "metadata.yaml").write_text(_patch_metadata(meta, counts, len(keep), start, duration))
    if (src / "gt").is_dir():
        shutil.copytree(src / "gt", dst / "gt", dirs_exist_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spann3r", type=Path, help="original Spann3R fixture folder")
    ap.add_argument("bag", type=Path, help="original rosbag2 MCAP folder")
    ap.add_argument("--frames", type=int, default=8, help="colour frames kept from the bag")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        copy_spann3r(args.spann3r, Path(tmp) / "spann3r")
        copy_bag(args.bag, Path(tmp) / args.bag.name, args.frames)
        for name in ("spann3r", args.bag.name):
            final = args.out / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(Path(tmp) / name, final)


if __name__ == "__main__":
    main()
