"""The application pipeline both runners share: frames in -> Reconstructor -> outputs.

:mod:`recon_ros.pipeline.outputs` turns the core's results into the ROS messages of recon_node
and hands them to a sink (the node's publishers, or an output rosbag2);
:mod:`recon_ros.pipeline.replay` is the loop of ``recon-ros replay`` over a recorded source. No
ROS is needed: messages are built from the message types the sink gives.
"""
