"""The Spann3R network and its spatial memory (torch only; no files, ROS or maps)."""
