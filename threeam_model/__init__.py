"""threeam_model: the 3AM tracker in pure PyTorch (no ROS imports anywhere in this package)."""
