"""Data in and out: rosbag2, datasets, converters, PLY / trajectory files, synthetic scenes."""
