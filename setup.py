from glob import glob

from setuptools import find_packages, setup

package_name = "threeam_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["threeam_ros", "threeam_ros.*", "threeam_model", "threeam_model.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="threeam developers",
    maintainer_email="threeam@example.com",
    description="Track prompted objects through viewpoint changes: SAM 2 + MUSt3R (3AM) as a ROS 2 node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "tracker_node = threeam_ros.tracker_node:main",
            "threeam-track = threeam_model.cli.track:main",
            "threeam-bench = threeam_model.cli.bench:main",
            "threeam-export = threeam_model.cli.export:main",
            "threeam-instances = threeam_model.cli.instances:main",
            "threeam-train = threeam_model.cli.train:main",
            "threeam-download-weights = threeam_model.weights:main",
        ],
    },
)
