"""recon_ros: online learned 3D reconstruction (Spann3R) for ROS 2, usable without ROS.

Only :mod:`recon_ros.ros` imports rclpy; everything else is a plain Python core.
"""

__version__ = "0.1.0"
