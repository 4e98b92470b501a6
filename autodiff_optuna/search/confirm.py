"""Confirm before naming a result: re-score what a study may name on noise it never searched on.

Every candidate of a study is scored on the same noise, and the search keeps what scored lowest
there: a small FID margin is partly that noise's luck (the winner's curse). So the candidates
that ``best``, ``export`` or the front can name are scored again on the confirmation stream
(``sampling.noise.CONFIRM``, disjoint from the search's, ``evaluate``'s held-out and the
teacher's), with as many images as the search used, and ``results`` ranks them by that
confirmed FID. Which candidates: stage 1's ``STAGE1_TOP`` best by screening (below) and the
uniform baseline first, then, until nothing changes, the best and every point of the thinned
front that is no worse than the uniform schedule (a point worse than it is never exported), by
what each FID is expected to be on fresh noise (``results.scored_points``): a confirmed point's
confirmed FID, an unconfirmed point's screened or search FID moved by the change the confirmed
showed (``results.expected_rise``). A confirmed FID can move a point off the front and another
onto it, which is then confirmed too. Compared by their search FIDs alone, the unconfirmed would
look better than the confirmed (these were chosen for their luck on the search's noise, and most
rose when confirmed): each confirmation would let the next unconfirmed point onto the front, a
cascade (BENCHMARKS.md, "Since: confirmation by expected FIDs").

Each confirmed FID is stored with its spread (study user attributes ``confirmed_fid:<trial>``
and ``confirmed_fid_spread:<trial>``: Optuna keeps a finished trial's attributes fixed) as soon
as it is computed, so a confirmation killed midway resumes where it stopped, and a study made
before confirmation (or its spread) existed is confirmed on its next run. The spread is the
FID's bootstrap standard deviation over the confirmation's images: on a few thousand images a
FID moves by more than a 10% tolerance from one draw of noise to the next, and the export rule
(``results.StudyResult.fast``) trades quality for compute only by a margin larger than that.
Confirming is the end of each stage's ``run``.

**Screening.** Stage 1's best are picked on fresh noise, not by their search FIDs, which rank
what the search selected poorly (it selected them partly for their luck on its noise): its
``SCREEN_TOP`` best complete candidates by search FID are each scored on ``screen_images``
images (a quarter of the confirmation's) of the screening stream (``sampling.noise.SCREEN``,
apart from the confirmation's, so that what chose a candidate does not also confirm it), and
the ``STAGE1_TOP`` lowest there are confirmed. On the bundled models' K=4 presets this named a
better schedule held out on 3 studies of 6 and a worse one on none, for 3,000 more images a
study (BENCHMARKS.md, "How many of stage 1's best to confirm"). Screened FIDs are stored like
the confirmed ones (``screened_fid:<trial>``), so screening resumes too, and a study made before
it is screened on its next run. Where a quarter of the images is too few for the FID's features
(under twice their minimum: Inception's 2048 at 5000 images), nothing is screened and stage 1's
``STAGE1_TOP`` best by search FID are confirmed.
"""

import math
import sys
import time

import optuna
from optuna.trial import FrozenTrial

from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.metrics.scoring import score_schedule, score_with_spread
from autodiff_optuna.sampling.noise import CONFIRM, SCREEN, draw
from autodiff_optuna.sampling.rules import StepRule
from autodiff_optuna.search import objectives
from autodiff_optuna.search.results import (
    MIN_SAVING,
    Point,
    check_config,
    complete_trials,
    linked_studies,
    pareto,
    scored_points,
    screenings,
    thin,
    uniform_trial,
)
from autodiff_optuna.storage import record
from autodiff_optuna.storage.record import (
    CONFIRMED_ATTR,
    CONFIRMED_SPREAD_ATTR,
    RULES_ATTR,
    SCREENED_ATTR,
    TIMESTEPS_ATTR,
)

STAGE1_TOP = 3  # stage 1's best few are confirmed whatever stage 2 finds
# a confirmation's images per image the search scored a full candidate on
IMAGES_PER_SEARCH_IMAGE = 1
SCREEN_TOP = 12  # stage 1's best complete candidates by search FID that screening scores
SCREEN_FRACTION = 4  # screening's images: 1/SCREEN_FRACTION of the confirmation's


def screen_images(confirmation_images: int, min_fid_images: int) -> int:
    """Images screening scores each candidate on; 0 (no screening) where that would be under
    twice the FID's minimum (a FID of barely more images than features is mostly noise)."""
    n = confirmation_images // SCREEN_FRACTION
    return n if n >= 2 * min_fid_images else 0


def to_confirm(stage1: optuna.Study, stage2: optuna.Study | None,
               min_saving: float = MIN_SAVING) -> list[Point]:
    """The unconfirmed points that the result can name now, by the FIDs known so far."""
    steps = check_config(stage1)["steps"]
    full = record.full_gflops(stage1.user_attrs, stage2 and stage2.user_attrs)
    points = scored_points(stage1, stage2, steps, full)
    if not points:
        return []
    by_key = {(p.stage, p.trial): p for p in points}
    wanted = _stage1_top(points)
    uniform = uniform_trial(stage1)
    limit = float("inf")
    if uniform is not None:
        wanted.append(by_key[(1, uniform.number)])
        limit = by_key[(1, uniform.number)].fid
    if first := _unconfirmed(wanted):
        # these first: what the rest is expected to score on fresh noise is learnt from them
        return first
    best = min(points, key=lambda p: (p.fid, p.gflops or 0.0, p.stage, p.trial))
    front = thin(pareto(points), min_saving * full) if full else []
    return _unconfirmed([best, *(p for p in front if p.fid <= max(limit, best.fid))])


def _unconfirmed(points: list[Point]) -> list[Point]:
    """``points`` not yet confirmed (or confirmed before spreads were measured), once each."""
    return list({(p.stage, p.trial): p for p in points
                 if p.confirmed_fid is None or p.confirmed_spread is None}.values())


def _stage1_top(points: list[Point]) -> list[Point]:
    """Stage 1's ``STAGE1_TOP`` lowest screened FIDs; its best by search FID where nothing was
    screened."""
    stage1 = [p for p in points if p.stage == 1]
    # a candidate whose images were not finite on the screening noise is not confirmed
    screened = [p for p in stage1
                if p.screened_fid is not None and math.isfinite(p.screened_fid)]
    if screened:
        return sorted(screened, key=lambda p: (p.screened_fid, p.trial))[:STAGE1_TOP]
    return sorted(stage1, key=_search_fid)[:STAGE1_TOP]


def to_screen(stage1: optuna.Study) -> list[FrozenTrial]:
    """Stage 1's ``SCREEN_TOP`` best complete trials by search FID not yet screened."""
    best = sorted(complete_trials(stage1), key=lambda t: (objectives.fid(t), t.number))
    done = screenings(stage1)
    return [t for t in best[:SCREEN_TOP] if t.number not in done]


def _search_fid(point: Point) -> float:
    return point.fid if point.search_fid is None else point.search_fid


def screen(ctx, stage1: optuna.Study, progress: bool = True, batch_size: int | None = None,
           deadline: float | None = None) -> int:
    """Score ``to_screen(stage1)`` on the screening noise, each stored as it is computed;
    returns the images sampled (none where the study's images are too few to screen)."""
    n = screen_images(ctx.config.samples * IMAGES_PER_SEARCH_IMAGE, ctx.scorer.min_samples)
    trials = to_screen(stage1) if n else []
    batch = draw(ctx.model, n, ctx.config.seed, SCREEN) if trials else None
    for trial in trials:
        if deadline is not None and time.monotonic() >= deadline:
            return n * trials.index(trial)
        started = time.monotonic()
        try:
            fid = score_schedule(ctx.model, ctx.scorer, tuple(trial.user_attrs[TIMESTEPS_ATTR]),
                                 batch, _rules(trial.user_attrs.get(RULES_ATTR)) or
                                 ctx.config.solver, batch_size)
        except FIDError:  # not finite on this noise: not confirmed (``_stage1_top``)
            fid = float("inf")
        stage1.set_user_attr(f"{SCREENED_ATTR}:{trial.number}", fid)
        if progress:
            print(f"screen  stage 1 trial {trial.number:>4}  {trial.user_attrs[TIMESTEPS_ATTR]}  "
                  f"search FID {objectives.fid(trial):8.3f}  screened on {n} images "
                  f"{fid:8.3f}  ({time.monotonic() - started:.1f}s)", file=sys.stdout, flush=True)
    return n * len(trials)


def _rules(stored: list | None) -> list[StepRule]:
    """A candidate's per-step rules as stored (``[order, corrector]`` each; none: its study's
    solver)."""
    return [StepRule(order, corrector) for order, corrector in stored or []]


def confirm(ctx, study: optuna.Study, progress: bool = True, batch_size: int | None = None,
            deadline: float | None = None) -> int:
    """Confirm what the search ``study`` belongs to can name (see the module's docstring);
    returns the images this call sampled. ``deadline`` (``time.monotonic()``): no candidate
    is started after it (the rest are confirmed on the next run)."""
    stage1, stage2 = linked_studies(study)
    studies = {1: stage1, 2: stage2}
    batch, images = None, screen(ctx, stage1, progress, batch_size, deadline)
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
                                                _rules(point.rules) or ctx.config.solver,
                                                batch_size,
                                                skip=[tuple(s) for s in point.skip])
            except FIDError:  # not finite on this noise: no result to name
                fid = spread = float("inf")
            study = studies[point.stage]
            study.set_user_attr(f"{CONFIRMED_ATTR}:{point.trial}", fid)
            study.set_user_attr(f"{CONFIRMED_SPREAD_ATTR}:{point.trial}", spread)
            images += len(batch.noise)
            if progress:
                print(f"confirm stage {point.stage} trial {point.trial:>4}  {point.timesteps}  "
                      f"skips {point.skipped:>2}  search FID {_search_fid(point):8.3f}  "
                      f"confirmed {fid:8.3f} ± {spread:.3f}  ({time.monotonic() - started:.1f}s)",
                      file=sys.stdout, flush=True)
    return images
