"""Training entry script (same as `threeam-train`; works under torchrun):

    python training/train.py --config training/configs/tiny_synthetic.yaml
    torchrun --nproc_per_node 2 training/train.py --config training/configs/tiny_synthetic.yaml

This folder is not a Python package: the `sam2` distribution installs a top-level package named `training`.
"""

import sys

from threeam_model.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
