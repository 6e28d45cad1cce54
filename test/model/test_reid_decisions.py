"""Re-identification's decision table: each row is one object's evidence on one frame -> what `decide` returns.

Every branch of `decide` and `decide_learning` is a row, and each threshold is tried at its boundary and just on the
other side of it (`below` = the next float under). The end-to-end behaviour is in test_reid_tracking.py. Last, over a
grid of evidence: the distances GeometricReID leaves unmeasured (`reads_distances`, `reads_jump`) never change a
decision.
"""

import dataclasses
import itertools
import math

import pytest

from threeam_model.reid import AnchorState, Decision, Evidence, ReIDConfig, decide
from threeam_model.reid.decision import (
    PRIOR_HELD_MIN,
    RELEARN_MIN_SCORE,
    decide_learning,
    reads_distances,
    reads_jump,
)

OUT, OCCLUDED, VACATED = AnchorState.OUT_OF_VIEW, AnchorState.OCCLUDED, AnchorState.VACATED
TOO_SMALL, VISIBLE = AnchorState.TOO_SMALL, AnchorState.VISIBLE
KEEP, LEARN, RELEARN = Decision.KEEP, Decision.LEARN, Decision.RELEARN
REACQUIRE, VETO, REJECT = Decision.REACQUIRE, Decision.VETO, Decision.REJECT
DEFAULTS = ReIDConfig()
MIN_VOXELS, COOLDOWN = DEFAULTS.min_anchor_voxels, DEFAULTS.cooldown_frames
VETO_NEAR, UPDATE_NEAR = DEFAULTS.veto_max_near_frac, DEFAULTS.update_min_near_frac
REACH = 0.5


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


# a mature anchor, in view and not prompted lately; the base's mask lies on its prior, next to its centre
BASE = dict(
    anchor=VISIBLE,
    anchor_voxels=MIN_VOXELS,
    frames_since_prompt=COOLDOWN + 1,
    mask_present=True,
    score=1.0,
    on_prior=0.5,
    prior_held=0.0,
    offset=0.1,
    jump=None,
    reach=REACH,
)
LOST = dict(mask_present=False, score=0.0, on_prior=0.0, offset=None)  # the base has no mask
SWITCHED = dict(on_prior=0.1, offset=0.6)  # the mask lies off the prior, far from the anchor
JUMPED = dict(anchor=OUT, on_prior=0.0, offset=0.6, jump=0.6)  # a mask from nowhere while the anchor is out of view
MOVED = dict(anchor=VACATED, on_prior=0.0)  # the anchor's place is seen empty, the base still has a mask
OFF_PRIOR = dict(on_prior=0.0)  # a mask that does not agree with the anchor
REJECTS = dict(reject_out_of_view=True)

ROWS = [
    # ---------------------------------------------------------------- re-acquire: visible anchor, no mask
    ("lost, anchor visible", LOST, {}, REACQUIRE),
    ("lost, anchor at min_anchor_voxels", dict(LOST, anchor_voxels=MIN_VOXELS), {}, REACQUIRE),
    ("lost, anchor one voxel under", dict(LOST, anchor_voxels=MIN_VOXELS - 1), {}, KEEP),
    ("lost, cooldown just over", dict(LOST, frames_since_prompt=COOLDOWN + 1), {}, REACQUIRE),
    ("lost, cooldown not over", dict(LOST, frames_since_prompt=COOLDOWN), {}, KEEP),
    ("lost, no cooldown, prompted last frame", dict(LOST, frames_since_prompt=1), dict(cooldown_frames=0), REACQUIRE),
    ("lost, no cooldown, prompted this frame", dict(LOST, frames_since_prompt=0), dict(cooldown_frames=0), KEEP),
    ("lost, never prompted", dict(LOST, frames_since_prompt=10**9), {}, REACQUIRE),
    ("lost, anchor occluded", dict(LOST, anchor=OCCLUDED), {}, KEEP),
    ("lost, anchor too small", dict(LOST, anchor=TOO_SMALL), {}, KEEP),
    ("lost, anchor vacated", dict(LOST, anchor=VACATED), {}, KEEP),
    ("lost, anchor out of view", dict(LOST, anchor=OUT), REJECTS, KEEP),
    ("lost, no anchor", dict(LOST, anchor=None, anchor_voxels=0), {}, KEEP),
    # ---------------------------------------------------------------- veto: off the prior and far from the anchor
    ("switched", SWITCHED, {}, VETO),
    ("switched, on_prior just under veto_max_near_frac", dict(SWITCHED, on_prior=below(VETO_NEAR)), {}, VETO),
    ("switched, on_prior at veto_max_near_frac", dict(SWITCHED, on_prior=VETO_NEAR), {}, KEEP),
    ("switched, offset at reach", dict(SWITCHED, offset=REACH), {}, KEEP),
    ("switched, offset just over reach", dict(SWITCHED, offset=math.nextafter(REACH, 1)), {}, VETO),
    ("switched, mask without geometry", dict(SWITCHED, offset=None), {}, KEEP),
    ("switched, anchor young", dict(SWITCHED, anchor_voxels=MIN_VOXELS - 1), {}, LEARN),
    ("switched, cooldown not over", dict(SWITCHED, frames_since_prompt=COOLDOWN), {}, KEEP),
    ("switched, anchor occluded", dict(SWITCHED, anchor=OCCLUDED), {}, KEEP),
    ("switched, anchor too small", dict(SWITCHED, anchor=TOO_SMALL), {}, KEEP),
    ("switched, veto_max_near_frac over update_min", dict(SWITCHED, on_prior=0.4), dict(veto_max_near_frac=0.5), VETO),
    # ---------------------------------------------------------------- reject: out of view, far and jumped
    ("jumped", JUMPED, REJECTS, REJECT),
    ("jumped, reject_out_of_view off", JUMPED, {}, KEEP),
    ("jumped, no mask last frame", dict(JUMPED, jump=math.inf), REJECTS, REJECT),
    ("jumped, jump at reach (a continuous track)", dict(JUMPED, jump=REACH), REJECTS, KEEP),
    ("jumped, jump just over reach", dict(JUMPED, jump=math.nextafter(REACH, 1)), REJECTS, REJECT),
    ("jumped, jump not measured", dict(JUMPED, jump=None), REJECTS, KEEP),
    ("jumped, offset at reach", dict(JUMPED, offset=REACH), REJECTS, KEEP),
    ("jumped, mask without geometry", dict(JUMPED, offset=None, jump=math.inf), REJECTS, KEEP),
    ("jumped, anchor young", dict(JUMPED, anchor_voxels=MIN_VOXELS - 1), REJECTS, LEARN),
    ("jumped, cooldown not over", dict(JUMPED, frames_since_prompt=COOLDOWN), REJECTS, KEEP),
    ("jumped, anchor occluded", dict(JUMPED, anchor=OCCLUDED), REJECTS, KEEP),
    ("jumped, anchor visible (the veto rule judges)", dict(JUMPED, anchor=VISIBLE), REJECTS, VETO),
    # ---------------------------------------------------------------- relearn: the object moved
    ("moved", MOVED, {}, RELEARN),
    ("moved, score at the minimum", dict(MOVED, score=RELEARN_MIN_SCORE), {}, RELEARN),
    ("moved, score just under", dict(MOVED, score=below(RELEARN_MIN_SCORE)), {}, KEEP),
    ("moved, low score, mask on the prior", dict(MOVED, score=0.4, on_prior=UPDATE_NEAR), {}, LEARN),
    ("moved, anchor young", dict(MOVED, anchor_voxels=1), {}, RELEARN),
    ("moved, cooldown not over", dict(MOVED, frames_since_prompt=0), {}, RELEARN),
    ("moved, no mask", dict(MOVED, **LOST), {}, KEEP),
    # ---------------------------------------------------------------- learn or keep a mask that stands
    ("tracked on the prior", {}, {}, LEARN),
    ("on_prior at update_min_near_frac", dict(on_prior=UPDATE_NEAR), {}, LEARN),
    ("on_prior just under update_min_near_frac", dict(on_prior=below(UPDATE_NEAR)), {}, KEEP),
    ("off the prior, holds half the prior (a close-up)", dict(OFF_PRIOR, prior_held=PRIOR_HELD_MIN), {}, LEARN),
    ("off the prior, holds just under half the prior", dict(OFF_PRIOR, prior_held=below(PRIOR_HELD_MIN)), {}, KEEP),
    ("off the prior, anchor young", dict(OFF_PRIOR, anchor_voxels=MIN_VOXELS - 1), {}, LEARN),
    ("off the prior, anchor at min_anchor_voxels", dict(OFF_PRIOR, anchor_voxels=MIN_VOXELS), {}, KEEP),
    ("no anchor yet", dict(OFF_PRIOR, anchor=None, anchor_voxels=0), {}, LEARN),
    ("anchor out of view, continuous track", dict(OFF_PRIOR, anchor=OUT), {}, KEEP),
    ("anchor occluded, mask on the prior", dict(anchor=OCCLUDED), {}, LEARN),
    ("anchor too small, mask holds its prior", dict(OFF_PRIOR, anchor=TOO_SMALL, prior_held=1.0), {}, LEARN),
    ("off the prior, update_min_near_frac 0", OFF_PRIOR, dict(update_min_near_frac=0.0), LEARN),
    ("on the whole prior, update_min_near_frac 1", dict(on_prior=below(1.0)), dict(update_min_near_frac=1.0), KEEP),
    ("anchor young, whatever the score", dict(OFF_PRIOR, score=0.0, anchor_voxels=1), {}, LEARN),
]


@pytest.mark.parametrize(("evidence", "config", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_decision_table(evidence, config, expected):
    assert decide(Evidence(**{**BASE, **evidence}), ReIDConfig(**config)) is expected


def test_the_table_reaches_every_decision():
    assert {r[3] for r in ROWS} == set(Decision)


# a prompt that was due but could not be made (the prior had no pixel to point at) falls back to these
FALLBACKS = [
    ("re-acquire that could not prompt", LOST, {}, KEEP),
    ("veto that could not prompt", SWITCHED, {}, KEEP),
    ("veto unmade, mask on the prior", dict(SWITCHED, on_prior=0.4), dict(veto_max_near_frac=0.5), LEARN),
]


@pytest.mark.parametrize(("evidence", "config", "expected"), [r[1:] for r in FALLBACKS], ids=[r[0] for r in FALLBACKS])
def test_learning_after_a_prompt_that_could_not_be_made(evidence, config, expected):
    ev, cfg = Evidence(**{**BASE, **evidence}), ReIDConfig(**config)
    assert decide(ev, cfg) in (REACQUIRE, VETO)
    assert decide_learning(ev, cfg) is expected


def test_states_and_event_kinds_equal_the_strings_they_were():
    assert VISIBLE == "visible" and OUT == "out_of_view" and VACATED == "vacated"
    assert REACQUIRE == "reacquire" and VETO == "veto" and REJECT == "reject"


def test_unmeasured_distances_never_change_a_decision():
    configs = {reject: ReIDConfig(reject_out_of_view=reject) for reject in (False, True)}
    grid = itertools.product(
        [None, *AnchorState],
        [MIN_VOXELS - 1, MIN_VOXELS],  # anchor_voxels
        [COOLDOWN, COOLDOWN + 1],  # frames_since_prompt
        [False, True],  # mask_present
        [0.3, 1.0],  # score
        [0.0, below(VETO_NEAR), VETO_NEAR, UPDATE_NEAR],  # on_prior
        [0.0, PRIOR_HELD_MIN],  # prior_held
        [None, REACH, 0.6],  # offset
        [None, REACH, math.inf],  # jump
        [False, True],  # reject_out_of_view
    )
    changed = []
    for *facts, offset, jump, reject in grid:
        cfg = configs[reject]
        ev = Evidence(*facts, offset=offset, reach=REACH, jump=jump)
        if not reads_distances(ev, cfg):
            unmeasured = dataclasses.replace(ev, offset=None, reach=0.0, jump=None)
        elif not reads_jump(ev, cfg):
            unmeasured = dataclasses.replace(ev, jump=None)
        else:
            continue
        if decide(unmeasured, cfg) is not decide(ev, cfg):
            changed.append((ev, reject))
    assert not changed, changed[:3]
