"""Offline VOS benchmarks: the paper's metrics (metrics), protocols (protocols), inputs (sequences), the resumable
runner (runner) and reports (report). Entry point: `threeam-bench` (threeam_model.cli.bench)."""
