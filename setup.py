"""Python packaging of specprune_ros (pip / editable installs).

colcon builds the ROS 2 package through CMakeLists.txt (ament_cmake: messages + this Python package);
this file serves `pip install -e .` into the project's virtual environment, which puts the console
scripts into `.venv/bin/`.
"""
from setuptools import find_packages, setup

PACKAGE = "specprune_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "specprune-infer = specprune_ros.cli.infer:main",
            "specprune-make-tiny = specprune_ros.cli.make_tiny:main",
            "specprune-bench = specprune_ros.cli.bench:main",
            "specprune-demo = specprune_ros.cli.demo:main",
            "specprune-replay = specprune_ros.bags.replay:main",
            "specprune-record = specprune_ros.bags.record:main",
            "specprune-eval = specprune_ros.bags.evaluate:main",
            "policy_node = specprune_ros.ros.policy_node:main",
            "libero_sim_node = specprune_ros.sim.libero_node:main",
            "specprune-libero-eval = specprune_ros.sim.libero_eval:main",
            "specprune-train = specprune_ros.testbed.train:main",
            "specprune-testbed-eval = specprune_ros.testbed.evaluate:main",
            "testbed_sim_node = specprune_ros.testbed.ros_bridge:main",
        ],
    },
)
