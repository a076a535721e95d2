"""LIBERO simulation: the OFT evaluation protocol (pure), the simulator wrapper, the ROS bridge node
and the evaluation runner. See docs/simulation.md."""
