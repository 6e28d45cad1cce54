"""Discovery: start tracks for the objects on a frame that nobody prompted.

A mask generator (SAM 2's automatic mask generator, `threeam_model.instances.proposals.SamProposals`, or any
callable rgb -> [Proposal]) proposes masks; `select_new_objects` keeps the ones worth a track: big enough, scored
high enough, mostly outside every tracked object and every mask kept before it (best score first), up to a cap.
`discover` prompts the tracker with each kept mask under a new id. Ids are the smallest ones free, so a robot that
discovers, removes and discovers again does not run its ids up to the label image's limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from threeam_model.instances.proposals import Proposal
from threeam_model.interface import MAX_OBJ_ID, ObjectResult, Tracker

MaskGenerator = Callable[[np.ndarray], list[Proposal]]


@dataclasses.dataclass(frozen=True)
class DiscoverySettings:
    min_area: int = 200  # pixels; smaller masks are noise or far-away clutter
    min_score: float = 0.7  # the generator's confidence (SAM 2: predicted IoU)
    max_overlap: float = 0.3  # most of a proposal's pixels that may already belong to a tracked or kept mask
    max_new: int = 8  # most tracks one discovery starts

    def __post_init__(self):
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {self.min_area}")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in [0, 1], got {self.max_overlap}")
        if self.max_new < 0:
            raise ValueError(f"max_new must be >= 0, got {self.max_new}")


@dataclasses.dataclass(frozen=True)
class Discovered:
    obj_id: int
    result: ObjectResult  # the tracker's answer to the mask prompt
    score: float  # the generator's


def select_new_objects(
    proposals: list[Proposal], occupied: np.ndarray, settings: DiscoverySettings, room: int
) -> list[Proposal]:
    """The proposals worth a new track, best score first. occupied: (H, W) bool, the tracked objects' pixels;
    room: how many more objects the tracker takes."""
    taken = occupied.copy()
    kept = []
    limit = min(settings.max_new, max(0, room))
    for p in sorted(proposals, key=lambda p: -p.score):
        if len(kept) >= limit:
            break
        area = int(p.mask.sum())
        if p.mask.shape != occupied.shape:
            raise ValueError(f"a proposal of size {p.mask.shape} for a frame of size {occupied.shape}")
        if area < settings.min_area or p.score < settings.min_score:
            continue
        if np.count_nonzero(p.mask & taken) > settings.max_overlap * area:
            continue
        kept.append(p)
        taken |= p.mask
    return kept


def free_ids(used, n: int) -> list[int]:
    """The n smallest object ids (1..MAX_OBJ_ID) not in `used`."""
    used = set(used)
    out = []
    candidate = 1
    while len(out) < n and candidate <= MAX_OBJ_ID:
        if candidate not in used:
            out.append(candidate)
        candidate += 1
    return out


def discover(
    tracker: Tracker,
    rgb: np.ndarray,
    objects: dict[int, ObjectResult],
    generate: MaskGenerator,
    settings: DiscoverySettings,
    max_objects: int,
) -> list[Discovered]:
    """Propose masks on the tracker's newest frame `rgb` (whose tracked objects are `objects`) and start a track for
    each one kept; returns the new tracks."""
    occupied = np.zeros(rgb.shape[:2], bool)
    for obj in objects.values():
        if obj.visible:
            occupied |= obj.mask
    ids = tracker.object_ids
    kept = select_new_objects(generate(rgb), occupied, settings, room=max_objects - len(ids))
    out = []
    for obj_id, proposal in zip(free_ids(ids, len(kept)), kept):
        out.append(Discovered(obj_id, tracker.add_prompt(obj_id, mask=proposal.mask), proposal.score))
    return out
