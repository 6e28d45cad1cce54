"""Every exception the model library raises on purpose, in one module that imports nothing.

Kept apart from `interface.py` so that packages below the tracker interface (`must3r/`, `export/`) can raise the
family without depending on the tracker API. All but `ExportError` are `ValueError`s: something the caller sent
(a frame, a prompt, a checkpoint, a command line) cannot be used, and the message says what to send instead.

    ValueError
    ├── TrackerInputError        input the tracker cannot act on
    │   ├── FrameError           a frame: wrong shape or dtype, empty, a size change mid-stream
    │   ├── PromptError          a prompt or object request: unknown id, point outside the image, bad mask
    │   └── GeometryInputError   depth, intrinsics, pose or pointmap that cannot be used
    ├── CheckpointError          a checkpoint (3AM or MUSt3R) that cannot be used
    └── UsageError               a command line a tool (threeam-track, threeam-bench, threeam-instances) refuses
    RuntimeError
    └── ExportError              an export that cannot run (a missing optional package, an unsupported model)

`interface.py` re-exports the tracker-input errors, `reid` re-exports `GeometryInputError`, and the modules that
raised the others before (`threeam_checkpoint`, `must3r`, `export.onnx_export`, the CLIs) re-export theirs, so the
old import paths keep working.
"""

from __future__ import annotations


class TrackerInputError(ValueError):
    """Input the tracker cannot act on. The message says what was wrong and what to send instead."""


class FrameError(TrackerInputError):
    """A frame that cannot be tracked: wrong shape or dtype, empty, or a size change mid-stream."""


class PromptError(TrackerInputError):
    """A prompt or object request that cannot be applied: unknown id, point outside the image, bad mask..."""


class GeometryInputError(TrackerInputError):
    """Depth, intrinsics, pose or pointmap that cannot be used; the message says what to send instead."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not in its format (3AM or MUSt3R), or not matching the models
    it is loaded into (or, for MUSt3R, its own recorded args)."""


class UsageError(ValueError):
    """A command line the tool cannot act on."""


class ExportError(RuntimeError):
    """The export cannot run (a missing optional package, an unsupported model); the message says what to do."""


__all__ = [
    "CheckpointError",
    "ExportError",
    "FrameError",
    "GeometryInputError",
    "PromptError",
    "TrackerInputError",
    "UsageError",
]
