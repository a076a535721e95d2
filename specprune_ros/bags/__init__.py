"""rosbag2 tools: replay into a ROS graph, record, offline evaluation, synthetic test bags.

Bags are read and written with the pure-Python ``rosbags`` library, so none of these tools needs
``ros2 bag``. Replay and record talk to the ROS graph through rclpy and move raw CDR bytes (no
re-serialization); the offline evaluator needs no ROS graph at all.
"""
