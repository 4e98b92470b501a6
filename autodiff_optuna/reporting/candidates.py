"""The candidates a report shows: every scored one (for the Pareto plot), and the rows of its
table: the uniform baseline, the best, the exported, the thinned front and stage 1's top
schedules, one row per trial, named by everything it is."""

import json
from dataclasses import dataclass, field

from autodiff_optuna.search.results import Point, StudyResult, scored_points


@dataclass
class Row:
    label: str  # what it is: "uniform", "best, exported, front", "stage 1 #2", "schedule file"
    study: str | None
    trial: int | None
    timesteps: list[int]
    skip: list[list[str]]  # per step, the layers skipped there
    fid: float | None  # what the result ranks it by: confirmed, else expected (None: no trial)
    gflops: float | None
    heldout_fid: float | None = None  # on held-out noise, filled in by heldout.fill
    notes: list[str] = field(default_factory=list)
    stage: int | None = None  # None: not a trial (a schedule file)
    share: float | None = None  # its GFLOPs as a share of the full network's
    # per step [order, corrector(, method(, scale))] where the solver was searched
    rules: list | None = None

    @property
    def skipped(self) -> int:
        return sum(len(s) for s in self.skip)


def scored(result: StudyResult) -> list[Point]:
    """Every complete trial of both stages as a Point (stage 1's at the full network's cost)."""
    return scored_points(result.stage1, result.stage2, result.config["steps"],
                         result.full_gflops)


def top_stage1(result: StudyResult, top: int) -> list[Point]:
    """Stage 1's ``top`` lowest-FID complete trials, one per distinct schedule (a trial the
    pruner stopped early has no FID on all the images, so it is not ranked)."""
    seen, ranked = set(), []
    for point in sorted((p for p in scored(result) if p.stage == 1), key=lambda p: p.fid):
        # as JSON: a user attribute is whatever JSON was stored, not always a list of integers
        key = json.dumps(point.timesteps)
        if key not in seen:
            seen.add(key)
            ranked.append(point)
    return ranked[:top]


def named(result: StudyResult, exported: Point | None) -> list[tuple[str, Point]]:
    """The points the page singles out, by role: uniform (when it completed), best, exported
    (None: the budget stage 2 was run with buys nothing as good as the uniform schedule)."""
    roles = [("uniform", result.uniform), ("best", result.best), ("exported", exported)]
    return [(role, point) for role, point in roles if point is not None]


def by_trial(roles: list[tuple[str, Point]]) -> list[tuple[list[str], Point]]:
    """``roles`` with each trial once, with all of its roles (the best is often also the
    exported one): in the order each trial first appears."""
    merged: dict[tuple[int, int], tuple[list[str], Point]] = {}
    for role, point in roles:
        names, _ = merged.setdefault((point.stage, point.trial), ([], point))
        if role not in names:
            names.append(role)
    return list(merged.values())


def rows(result: StudyResult, exported: Point, top: int,
         full_gflops: float | None) -> list[Row]:
    """Uniform, best, exported, the thinned front (cheapest first), then stage 1's ``top``
    (``top`` 0: none), one row per trial: a trial that is several of them is one row whose label
    names them all. ``full_gflops``: the full network's, where the study did not record it."""
    roles = named(result, exported) + [("front", p) for p in result.front]
    roles += [(f"stage 1 #{rank}", p) for rank, p in enumerate(top_stage1(result, top), 1)]
    full = result.full_gflops or full_gflops
    return [_row(", ".join(names), point, full) for names, point in by_trial(roles)]


def _row(label: str, point: Point, full_gflops: float | None) -> Row:
    # the stored value as it is (the table escapes it; a held-out FID needs a real schedule)
    timesteps = point.timesteps
    gflops = point.gflops if point.gflops is not None or point.stage == 2 else full_gflops
    return Row(label, point.study, point.trial,
               list(timesteps) if isinstance(timesteps, list) else timesteps,
               [list(s) for s in point.skip], point.fid, gflops, stage=point.stage,
               share=None if gflops is None or not full_gflops else gflops / full_gflops,
               rules=point.rules)
