"""What re-identification decides for one object on one frame, as a pure function of the evidence.

`GeometricReID` gathers an `Evidence` per object and frame (where its anchor stands, the base tracker's mask
against the anchor's prior and centre) and applies what `decide` returns:

- REACQUIRE: the anchor is visible, the base has lost the object: prompt the base from the prior.
- VETO: the anchor is visible, the base's mask lies off the prior and far from the anchor: an identity switch,
  corrected by a prompt from the prior plus a negative point on the wrong mask.
- REJECT (only with `reject_out_of_view`): the anchor's place is out of view and the mask jumped there from
  nowhere, far from the anchor: a negative point on it alone.
- RELEARN: the anchor's place is seen empty while the base follows the object confidently: the object moved, so
  the anchor is cleared and re-seeded from the mask.
- LEARN: the base's mask stands and agrees with the anchor (or the anchor is too young to judge): the anchor
  learns it.
- KEEP: the base's result stands, the anchor is left as it is (no mask, or one that disagrees with the anchor).

Prompts come first; the learning rules (`decide_learning`) apply when no prompt is due, or when a due prompt
could not be made (a prior with no pixel to point at).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from threeam_model.reid.reid import ReIDConfig


# StrEnums: code that compares states and event kinds with the strings they used to be still works
class AnchorState(enum.StrEnum):
    """Where an object's anchor stands in the current frame (see `locate`)."""

    OUT_OF_VIEW = "out_of_view"  # no anchor point projects into the image
    OCCLUDED = "occluded"  # mostly hidden behind something nearer
    VACATED = "vacated"  # its place is seen, farther than the anchor: the object is not there any more
    TOO_SMALL = "too_small"  # supported, but its prior covers too few pixels to act on
    VISIBLE = "visible"  # supported, with a prior large enough to prompt from


class Decision(enum.StrEnum):
    """What `decide` returns (see the module docstring); the prompts are also `ReIDEvent.kind`."""

    KEEP = "keep"
    LEARN = "learn"
    RELEARN = "relearn"
    REACQUIRE = "reacquire"
    VETO = "veto"
    REJECT = "reject"


PROMPTS = frozenset({Decision.REACQUIRE, Decision.VETO, Decision.REJECT})
RELEARN_MIN_SCORE = 0.5  # the base must be this sure of a mask to move the anchor to it
PRIOR_HELD_MIN = 0.5  # a mask holding this share of the prior agrees: a close-up or a new side of the object


@dataclasses.dataclass(frozen=True)
class Evidence:
    """The facts about one object on one frame that the decision reads.

    The distances (offset, reach, jump) cost a median over the mask's points and a distance table, so they are
    measured only where `decide` reads them (`reads_distances`, `reads_jump`); unmeasured, they are None."""

    anchor: AnchorState | None  # None: the object has no anchor yet
    anchor_voxels: int  # the anchor's size; one under `min_anchor_voxels` neither prompts nor judges masks
    frames_since_prompt: int  # since re-identification last prompted this object (huge when never)
    mask_present: bool  # the base's mask is non-empty on the geometry grid
    score: float = 0.0  # the base's confidence in its mask
    on_prior: float = 0.0  # share of the mask's pixels with geometry that lie on the anchor's prior
    prior_held: float = 0.0  # share of the prior's pixels under the mask (0 without a prior)
    offset: float | None = None  # anchor centre to the mask's median world point; None also: no mask pixel has depth
    reach: float = 0.0  # how far the object's size lets offset and jump go: its extent + depth_tol x the mask's depth
    jump: float | None = None  # median distance of the mask's world points from last frame's; inf: none last frame

    @property
    def far_from_anchor(self) -> bool:
        return self.offset is not None and self.offset > self.reach

    @property
    def jumped(self) -> bool:
        """The mask does not continue last frame's mask."""
        return self.jump is not None and self.jump > self.reach


def _may_prompt(ev: Evidence, cfg: ReIDConfig) -> bool:
    return ev.anchor_voxels >= cfg.min_anchor_voxels and ev.frames_since_prompt > cfg.cooldown_frames


def reads_distances(ev: Evidence, cfg: ReIDConfig) -> bool:
    """Whether `decide` reads offset and reach: a mask mostly off a visible anchor's prior (VETO?), or any mask
    while the anchor is out of view and `reject_out_of_view` is on (REJECT?)."""
    if not (ev.mask_present and _may_prompt(ev, cfg)):
        return False
    if ev.anchor is AnchorState.VISIBLE:
        return ev.on_prior < cfg.veto_max_near_frac
    return cfg.reject_out_of_view and ev.anchor is AnchorState.OUT_OF_VIEW


def reads_jump(ev: Evidence, cfg: ReIDConfig) -> bool:
    """Whether `decide` reads jump (REJECT's last test); needs offset and reach measured."""
    return reads_distances(ev, cfg) and ev.far_from_anchor and ev.anchor is not AnchorState.VISIBLE


def decide(ev: Evidence, cfg: ReIDConfig) -> Decision:
    """The re-identification decision for one object on one frame."""
    if ev.anchor is AnchorState.VISIBLE and not ev.mask_present and _may_prompt(ev, cfg):
        return Decision.REACQUIRE
    if reads_distances(ev, cfg) and ev.far_from_anchor:
        if ev.anchor is AnchorState.VISIBLE:
            return Decision.VETO
        if ev.jumped:
            return Decision.REJECT
    return decide_learning(ev, cfg)


def decide_learning(ev: Evidence, cfg: ReIDConfig) -> Decision:
    """What the anchor does with a mask that stands (no prompt): KEEP, LEARN or RELEARN."""
    if not ev.mask_present:
        return Decision.KEEP
    if ev.anchor is AnchorState.VACATED and ev.score >= RELEARN_MIN_SCORE:
        return Decision.RELEARN
    # (learning a continuous track while the anchor is out of view was tried: it let look-alike jumps into the
    # anchor and cost 11 points of recall on the benchmark)
    young = ev.anchor_voxels < cfg.min_anchor_voxels
    if young or ev.on_prior >= cfg.update_min_near_frac or ev.prior_held >= PRIOR_HELD_MIN:
        return Decision.LEARN
    return Decision.KEEP


__all__ = [
    "PROMPTS",
    "AnchorState",
    "Decision",
    "Evidence",
    "decide",
    "decide_learning",
    "reads_distances",
    "reads_jump",
]
