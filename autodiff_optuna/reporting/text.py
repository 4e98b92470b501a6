"""A study's result and a storage's listing as the command line prints them: lines of text,
which the commands print (``best``, ``study``'s last lines, ``export``, ``list``)."""

from autodiff_optuna.errors import printable
from autodiff_optuna.search.progress import duration
from autodiff_optuna.search.results import UNSKIPPABLE_ATTR, StudyResult, describe_counts

# a stage's trials that did not count towards its target, as the listing names them
OTHER_TRIALS = {"stopped_early": "stopped early", "interrupted": "interrupted",
                "queued": "queued", "running": "running", "failed": "failed"}


def result_lines(result: StudyResult) -> list[str]:
    """The result as ``best`` prints it: the baseline, the best, the exported one, the front.
    A budget that is refused is refused (``StudyResult.exported``) before any line is made."""
    full = result.full_gflops
    pick, rule = result.exported()
    stages = " and ".join(f"stage {stage} ({describe_counts(counts)})"
                          for stage, counts in result.counts.items())
    lines = [f"{printable(result.name)}: {stages}"]
    if result.uniform is not None:
        lines.append(f"  uniform  {result.uniform.describe(full)}")
    else:
        lines.append("  uniform  its trial did not complete: no baseline")
    if result.dp is not None:
        lines.append(f"  dp       {result.dp.describe(full)}")
    lines.append(f"  best     {result.best.describe(full)}")
    if result.set_aside:
        lines.append(f"  set aside  {set_aside_text(result)}")
    lines.append(f"  export   {pick.describe(full)}  ({rule}: what export writes)"
                 if pick is not None else f"  export   none: {rule}")
    if full is None:
        return lines + ["  (no GFLOPs recorded: rerun the study command once to record them)"]
    lines.append(f"Pareto front of both stages, cheapest first (skips: layer-steps skipped; full "
                 f"network {full:.4f} GFLOPs/image{_unskippable(result)}; each point saves at "
                 f"least {result.min_saving:.1%} of it over the next; FID confirmed, or as "
                 "expected where not):")
    for point in result.front:
        notes = [note for note, holds in (
            ("expected", point.expected),
            ("the mean of search and confirmed", point.pooled),
            ("worse than uniform", result.uniform is not None and point.fid > result.uniform.fid))
            if holds]
        lines.append(f"  GFLOPs {point.gflops:.4f} ({point.share(full):6.1%})  FID "
                     f"{point.fid:8.3f}  skips {point.skipped:>2}  {point.timesteps}  (stage "
                     f"{point.stage} trial {point.trial})"
                     + ("  " + ", ".join(notes) if notes else ""))
    return lines


def set_aside_text(result: StudyResult) -> str:
    """The stage-2 points only their confirmed FID ranks ahead of stage 1's best
    (``results.offered``): how many, and the lowest of them."""
    lowest, count = result.set_aside[0], len(result.set_aside)
    return (f"{count} stage-2 point{'s' * (count != 1)} ahead of stage 1's best by the "
            f"confirmed FID but not on the search's noise, not offered as a result; the lowest: "
            f"{lowest.describe(result.full_gflops)}")


def _unskippable(result: StudyResult) -> str:
    """The work beside the network that no mask skips (a latent model's text encoder and
    decoder), as the study recorded it: empty for a model that has none."""
    stage2 = result.stage2
    parts = (stage2.user_attrs.get(UNSKIPPABLE_ATTR) if stage2 is not None else None) or {}
    if not parts:
        return ""
    return "; not skippable: " + ", ".join(f"{part.replace('_', ' ')} {gflops:.4f}"
                                           for part, gflops in parts.items())


def no_baseline_warning(result: StudyResult) -> str | None:
    """The warning a result without a complete uniform trial is shown with (None: it has one)."""
    if result.uniform is not None:
        return None
    return (f"warning: study {printable(result.name)!r} has no complete uniform trial: what is "
            "exported is not checked against the baseline")


def exported_line(path: str, result: StudyResult, pick) -> str:
    """What ``export`` says it wrote: the point, and the uniform schedule's FID."""
    uniform = "" if result.uniform is None else f"; uniform FID {result.uniform.fid:.3f}"
    return f"wrote {path}: {pick.describe(result.full_gflops)}{uniform}"


def done_line(result: StudyResult, seconds: float) -> str:
    """The one line a study ends with, ``seconds`` after it started."""
    full = result.full_gflops
    pick, _ = result.exported()
    uniform = "n/a" if result.uniform is None else f"{result.uniform.fid:.3f}"
    if pick is None:
        export = "export none within the budget"
    else:
        share = pick.share(full)
        cost = "" if share is None else f" at {share:.1%} of the GFLOPs"
        export = f"export FID {pick.fid:.3f}{cost} (stage {pick.stage} trial {pick.trial})"
    trials = "; ".join(f"stage {stage} {describe_counts(counts)}"
                       for stage, counts in result.counts.items())
    points = len(result.front)
    return (f"done: {printable(result.name)} in {duration(seconds)}: best FID "
            f"{result.best.fid:.3f} (stage {result.best.stage} trial {result.best.trial}), "
            f"uniform FID {uniform}, {export}, front {points} point{'s' * (points != 1)}; "
            f"{trials}")


def listing_lines(rows: list[dict]) -> list[str]:
    """``list``'s table: a row a search (``results.study_listing``), columns aligned."""
    if not rows:
        return ["no studies"]
    header = ["study", "model", "steps", "stage 1", "stage 2", "best FID", "uniform FID"]
    table = [header] + [[row["study"], _model_cell(row),
                         str(row["steps"] or "-"), _stage_cell(row, 1), _stage_cell(row, 2),
                         _fid_cell(row["best_fid"]), _fid_cell(row["uniform_fid"])]
                        for row in rows]
    widths = [max(len(printable(r[i])) for r in table) for i in range(len(header))]
    return ["  ".join(printable(cell).ljust(width) for cell, width in zip(r, widths)).rstrip()
            for r in table]


def _model_cell(row: dict) -> str:
    if row.get("half_made"):  # a study command killed while making it: its next run remakes it
        return "half made"
    return "foreign" if row["foreign"] else row["model"]


def _stage_cell(row: dict, stage: int) -> str:
    """``done 100/100, 48 stopped early``; ``31/100, 1 interrupted, 1 queued`` (unfinished);
    ``40 complete`` where the stage did not record its target; ``-``: no such stage."""
    key = f"stage{stage}"
    if key not in row["trials"]:
        return "-"
    counts, state = row["trials"][key], row["state"][key]
    if state["target"] is None:
        progress = f"{counts['complete']} complete"
    else:
        progress = ("done " if state["finished"] else "") + \
            f"{state['evaluated']}/{state['target']}"
        if state.get("stopped"):
            progress += (f" (ended after generation {state['stopped']['after_generation']}: "
                         "nothing cheaper within the tolerance)")
    return ", ".join([progress] + [f"{counts[k]} {text}" for k, text in OTHER_TRIALS.items()
                                   if counts.get(k)])


def _fid_cell(fid) -> str:
    return "-" if fid is None else f"{fid:.3f}"
