"""Pure-Python core: model, preprocessing, policy API, pruning and control. No ROS imports."""
