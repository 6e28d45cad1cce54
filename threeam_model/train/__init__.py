"""Training 3AM: SAM 2's losses and prompting schedule, the model step, and the loop (library side).

Entry points: `threeam-train` (threeam_model.cli.train) and training/train.py with the YAML configs in training/.
(Not named `training`: the sam2 package owns that top-level name.)
"""
