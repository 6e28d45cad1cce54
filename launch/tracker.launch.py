"""Start the threeam tracker node with a parameters file and topic remappings.

    ros2 launch threeam_ros tracker.launch.py image:=/camera/color/image_raw
    ros2 launch threeam_ros tracker.launch.py config:=/path/to/my_tracker.yaml device:=cuda \\
        sam2_checkpoint:=/path/to/sam2.1_hiera_large.pt variant:=large
    ros2 launch threeam_ros tracker.launch.py random_weights:=true device:=cpu   # try it without any weights
    ros2 launch threeam_ros tracker.launch.py autostart:=false   # stays unconfigured: ros2 lifecycle set ...

Every argument left empty keeps the value from the parameters file (config/tracker.yaml by default). The node is
a managed (lifecycle) node; it configures and activates itself unless autostart is false.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# launch argument -> node parameter it overrides when not empty (string parameters only)
PARAMETER_ARGUMENTS = {
    "device": "model.device",
    "variant": "model.variant",
    "sam2_checkpoint": "model.sam2_checkpoint",
    "threeam_checkpoint": "model.threeam_checkpoint",
    "must3r_checkpoint": "model.must3r_checkpoint",
    "transport": "input.transport",
    "qos": "input.qos",
}
# launch argument -> boolean node parameter it overrides when not empty ("true" or "false")
BOOLEAN_ARGUMENTS = {
    "random_weights": "model.random_weights_tiny",
    "autostart": "lifecycle.autostart",
}
# launch argument -> (topic name inside the node, default target)
REMAPPING_ARGUMENTS = {
    "image": ("image", "image"),
    "depth": ("depth", "depth"),  # reid.source rgbd
    "depth_camera_info": ("depth/camera_info", "depth/camera_info"),  # reid.source rgbd
    "camera_info": ("camera_info", ""),  # empty: beside the image topic, as image_transport pairs them
}


def camera_info_beside(image_topic: str) -> str:
    """The camera_info topic of a camera's image topic (its sibling): /cam/color/image_raw -> /cam/color/camera_info."""
    parent = image_topic.rstrip("/").rpartition("/")[0]
    return f"{parent}/camera_info" if parent or image_topic.startswith("/") else "camera_info"


def _tracker_node(context):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    if not os.path.isfile(value("config")):
        raise FileNotFoundError(f"launch argument config: parameters file {value('config')!r} does not exist")
    overrides = {param: value(arg) for arg, param in PARAMETER_ARGUMENTS.items() if value(arg)}
    for arg, param in BOOLEAN_ARGUMENTS.items():
        text = value(arg).strip().lower()
        if text:
            if text not in ("true", "false"):
                raise ValueError(f"launch argument {arg} must be true or false, got {value(arg)!r}")
            overrides[param] = text == "true"
    remappings = [(inner, value(arg)) for arg, (inner, _) in REMAPPING_ARGUMENTS.items()]
    remappings = [(inner, target or camera_info_beside(value("image"))) for inner, target in remappings]
    return [
        Node(
            package="threeam_ros",
            executable="tracker_node",
            name=value("node_name"),
            namespace=value("namespace"),
            parameters=[value("config"), overrides],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_config = PathJoinSubstitution([FindPackageShare("threeam_ros"), "config", "tracker.yaml"])
    arguments = [
        DeclareLaunchArgument("config", default_value=default_config, description="Parameters file of the node."),
        DeclareLaunchArgument("node_name", default_value="threeam_tracker", description="Name of the node."),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node."),
    ]
    arguments += [
        DeclareLaunchArgument(arg, default_value="", description=f"Overrides {param} when not empty.")
        for arg, param in PARAMETER_ARGUMENTS.items()
    ]
    arguments += [
        DeclareLaunchArgument(arg, default_value="", description=f"Overrides {param} when not empty (true/false).")
        for arg, param in BOOLEAN_ARGUMENTS.items()
    ]
    arguments += [
        DeclareLaunchArgument(arg, default_value=target, description=f"Topic remapped onto the node's '{inner}'.")
        for arg, (inner, target) in REMAPPING_ARGUMENTS.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_tracker_node)])
