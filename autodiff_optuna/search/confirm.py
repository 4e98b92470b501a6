"""Confirm before naming a result: re-score what a study may name on noise it never searched on.

Every candidate of a study is scored on the same noise, and the search keeps what scored lowest
there: a small FID margin is partly that noise's luck (the winner's curse). So the candidates
that ``best``, ``export`` or the front can name are scored again on the confirmation stream
(``sampling.noise.CONFIRM``, disjoint from the search's, ``evaluate``'s held-out and the
teacher's), with as many images as the search used, and ``results`` ranks them by that
confirmed FID. Which candidates: stage 1's ``STAGE1_TOP`` best and the uniform baseline, then,
until nothing changes, the best and every point of the thinned front that is no worse than the
uniform schedule (a point worse than it is never exported), by what each FID is expected to be
on fresh noise (``results.scored_points``): a confirmed point's confirmed FID, an unconfirmed
point's search FID plus the rise the confirmed showed (``results.expected_rise``). A confirmed
FID can move a point off the front and another onto it, which is then confirmed too. Compared
by their search FIDs alone, the unconfirmed would look better than the confirmed (these were
chosen for their luck on the search's noise, and most rose when confirmed): each confirmation
would let the next unconfirmed point onto the front, a cascade (BENCHMARKS.md, "Since:
confirmation by expected FIDs"). The uniform baseline, confirmed whatever it scored, is ranked
by the mean of its search and confirmed FIDs (``results.pooled_baseline``).

Each confirmed FID is stored with its spread (study user attributes ``confirmed_fid:<trial>``
and ``confirmed_fid_spread:<trial>``: Optuna keeps a finished trial's attributes fixed) as soon
as it is computed, so a confirmation killed midway resumes where it stopped, and a study made
before confirmation (or its spread) existed is confirmed on its next run. The spread is the
FID's bootstrap standard deviation over the confirmation's images: on a few thousand images a
FID moves by more than a 10% tolerance from one draw of noise to the next, and the export rule
(``results.StudyResult.fast``) trades quality for compute only by a margin larger than that.
Confirming is the end of each stage's ``run``.
"""

import sys
import time

import optuna

from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.metrics.scoring import score_with_spread
from autodiff_optuna.sampling.noise import CONFIRM, draw
from autodiff_optuna.search.results import (
    MIN_SAVING,
    Point,
    check_config,
    linked_studies,
    offered,
    pareto,
    ranked,
    scored_points,
    thin,
    uniform_trial,
)
from autodiff_optuna.storage import record
from autodiff_optuna.storage.record import CONFIRMED_ATTR, CONFIRMED_SPREAD_ATTR

STAGE1_TOP = 3  # stage 1's best few are confirmed whatever stage 2 finds
# a confirmation's images per image the search scored a full candidate on
IMAGES_PER_SEARCH_IMAGE = 1


def to_confirm(stage1: optuna.Study, stage2: optuna.Study | None,
               min_saving: float = MIN_SAVING) -> list[Point]:
    """The unconfirmed points that the result can name now, by the FIDs known so far."""
    steps = check_config(stage1)["steps"]
    full = record.full_gflops(stage1.user_attrs, stage2 and stage2.user_attrs)
    points = offered(scored_points(stage1, stage2, steps, full))
    if not points:
        return []
    by_key = {(p.stage, p.trial): p for p in points}
    wanted = sorted((p for p in points if p.stage == 1), key=lambda p: p.searched)[:STAGE1_TOP]
    uniform = uniform_trial(stage1)
    limit = float("inf")
    if uniform is not None:
        wanted.append(by_key[(1, uniform.number)])
        limit = by_key[(1, uniform.number)].fid
    best = min(points, key=ranked)
    front = thin(pareto(points), min_saving * full) if full else []
    wanted += [best, *(p for p in front if p.fid <= max(limit, best.fid))]
    return list({(p.stage, p.trial): p for p in wanted
                 if p.confirmed_fid is None or p.confirmed_spread is None}.values())


def confirm(ctx, study: optuna.Study, progress: bool = True, batch_size: int | None = None,
            deadline: float | None = None) -> int:
    """Confirm what the search ``study`` belongs to can name (see the module's docstring);
    returns the images this call sampled. ``deadline`` (``time.monotonic()``): no candidate
    is started after it (the rest are confirmed on the next run)."""
    stage1, stage2 = linked_studies(study)
    studies = {1: stage1, 2: stage2}
    batch, images = None, 0
    while points := to_confirm(stage1, stage2):
        for point in points:
            if deadline is not None and time.monotonic() >= deadline:
                return images
            if batch is None:  # only when there is something to confirm
                batch = draw(ctx.model, ctx.config.samples * IMAGES_PER_SEARCH_IMAGE,
                             ctx.config.seed, CONFIRM)
            started = time.monotonic()
            try:
                fid, spread = score_with_spread(ctx.model, ctx.scorer, point.timesteps, batch,
                                                ctx.config.solver_of(point.rules), batch_size,
                                                skip=[tuple(s) for s in point.skip])
            except FIDError:  # not finite on this noise: no result to name
                fid = spread = float("inf")
            study = studies[point.stage]
            study.set_user_attr(f"{CONFIRMED_ATTR}:{point.trial}", fid)
            study.set_user_attr(f"{CONFIRMED_SPREAD_ATTR}:{point.trial}", spread)
            images += len(batch.noise)
            if progress:
                print(f"confirm stage {point.stage} trial {point.trial:>4}  {point.timesteps}  "
                      f"skips {point.skipped:>2}  search FID {point.searched:8.3f}  "
                      f"confirmed {fid:8.3f} ± {spread:.3f}  ({time.monotonic() - started:.1f}s)",
                      file=sys.stdout, flush=True)
    return images
