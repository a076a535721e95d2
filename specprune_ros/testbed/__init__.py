"""Pruning-quality test bed: a fast procedural tabletop task, its scripted expert, data, training and evaluation.

Everything here runs on a CPU without ROS; ``ros_bridge`` is the thin ROS 2 adapter around :mod:`task`.
"""
from pathlib import Path

#: the committed test-bed policy (checkpoints/testbed in the repository)
TESTBED_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "testbed"
