"""The online pipeline without ROS: frames, frontends, scale, keyframes, fused map."""
