"""Pruning-quality test bed: a fast procedural tabletop task, its scripted expert, data, training and evaluation.

Everything here runs on a CPU without ROS; ``ros_bridge`` is the thin ROS 2 adapter around :mod:`task`.
"""
