"""The only package that imports rclpy / tf2_ros: the two nodes and their wiring."""
