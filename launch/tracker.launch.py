"""Start the threeam tracker node with a parameters file and topic remappings.

    ros2 launch threeam_ros tracker.launch.py image:=/camera/color/image_raw
    ros2 launch threeam_ros tracker.launch.py config:=/path/to/my_tracker.yaml device:=cuda \\
        sam2_checkpoint:=/path/to/sam2.1_hiera_large.pt variant:=large
    ros2 launch threeam_ros tracker.launch.py random_weights:=true device:=cpu   # try it without any weights
    ros2 launch threeam_ros tracker.launch.py autostart:=false   # stays unconfigured: ros2 lifecycle set ...
    ros2 launch threeam_ros tracker.launch.py fastdds_profile:=false   # no Fast DDS profile for the node

fastdds_profile (default true) starts the node with FASTDDS_DEFAULT_PROFILES_FILE set to the package's
config/fastdds_large_frames.xml (large shared-memory segment and socket buffers, so best-effort HD frames are not
lost), unless that variable is already set in the environment; false leaves the environment alone; any other value
is a profile file to use. The camera's process needs the profile too (README: QoS advice for cameras).

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
    "random_weights": "model.tiny",
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


def fastdds_environment(setting: str, share: str, environ) -> dict:
    """The environment the node gets for launch argument fastdds_profile (see the module docstring)."""
    text = setting.strip()
    if text.lower() == "false" or (text.lower() == "true" and environ.get("FASTDDS_DEFAULT_PROFILES_FILE")):
        return {}
    path = os.path.join(share, "config", "fastdds_large_frames.xml") if text.lower() == "true" else text
    if not os.path.isfile(path):
        raise FileNotFoundError(f"launch argument fastdds_profile: Fast DDS profile {path!r} does not exist")
    return {"FASTDDS_DEFAULT_PROFILES_FILE": path}


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
    share = FindPackageShare("threeam_ros").perform(context)
    environment = fastdds_environment(value("fastdds_profile"), share, os.environ)
    return [
        Node(
            package="threeam_ros",
            executable="tracker_node",
            name=value("node_name"),
            namespace=value("namespace"),
            parameters=[value("config"), overrides],
            remappings=remappings,
            additional_env=environment,
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
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value="true",
            description="true: FASTDDS_DEFAULT_PROFILES_FILE = the package's fastdds_large_frames.xml for the node "
            "(unless already set); false: leave the environment alone; or a profile file.",
        ),
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
