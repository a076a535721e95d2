"""ROS 2 layer: thin adapters between ROS messages and the core policy API."""
