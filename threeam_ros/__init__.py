"""threeam_ros: the ROS 2 node around threeam_model."""
