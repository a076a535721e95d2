"""specprune_ros: SpecPrune-VLA token pruning for OpenVLA-OFT policies, with a ROS 2 node.

The pure-Python core lives in :mod:`specprune_ros.core` and never imports ROS. The ROS 2 layer lives in
:mod:`specprune_ros.ros`. Generated message classes (``specprune_ros.msg``) come from the colcon build
and are found through the package path extension below.
"""
from pkgutil import extend_path

# The colcon build installs generated interfaces (specprune_ros/msg) into another site-packages
# directory; extending __path__ lets `specprune_ros.msg` resolve from there while the Python sources are
# used from this tree.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
