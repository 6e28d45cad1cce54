"""Class-agnostic 3D instances from tracked 2D masks (the paper's Table 5, supplement D), and the ScanNet AP."""
