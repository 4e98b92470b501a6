"""Held-out FID of the table's candidates, as ``evaluate`` computes it, cached in the study.

The search scores every candidate on one fixed noise batch, so the best of many candidates is
biased towards that batch; the held-out noise stream (``sampling.noise.HELDOUT``) is one no study
searches on. Each value is stored in the stage-1 study's user attribute ``heldout_fid`` with
what it was computed from, as soon as it is computed (an interrupted report keeps the values it
finished), so a rerun of the report does not sample again.
"""

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.metrics.scoring import score_schedule
from autodiff_optuna.sampling import HELDOUT, draw, validate
from autodiff_optuna.storage.record import HELDOUT_FID_ATTR


def fill(rows, study, model, scorer, solver_of, samples: int, seed: int, log) -> None:
    """Set ``heldout_fid`` on every row: from the cache, or sampled on held-out noise, with
    ``solver_of(row)``: what the study sampled the row's candidate with."""
    cached = [c for c in _stored(study) if isinstance(c, dict)]
    batch = None
    for i, row in enumerate(rows, 1):
        if not _is_schedule(row, model):  # a trial whose stored time steps are not a schedule
            log(f"held-out FID {i}/{len(rows)}: skipped, {row.label}'s stored time steps are not "
                "a schedule")
            row.heldout_fid = None
            continue
        row_solver = solver_of(row)  # a name or JSON rules, as the cache key holds them
        key = {"timesteps": row.timesteps, "skip": row.skip, "solver": row_solver,
               "samples": samples, "seed": seed, "model_weights": model.fingerprint,
               "fid_features": scorer.name}
        hit = next((c for c in cached if {k: c.get(k) for k in key} == key), None)
        if hit is None:
            log(f"held-out FID {i}/{len(rows)}: {row.timesteps}, {row.skipped} layer-step"
                f"{'s' * (row.skipped != 1)} skipped, {samples} samples")
            batch = batch or draw(model, samples, seed, HELDOUT)  # one batch: common noise
            hit = {**key, "fid": _score(model, scorer, row, batch, row_solver)}
            cached.append(hit)
            _store(study, hit)
        row.heldout_fid = hit.get("fid")


def _stored(study) -> list:
    """The cache as stored (a list, unless something else wrote the attribute)."""
    cached = study.user_attrs.get(HELDOUT_FID_ATTR, [])
    return cached if isinstance(cached, list) else []


def _is_schedule(row, model) -> bool:
    try:
        validate(row.timesteps if isinstance(row.timesteps, list) else [None],
                 model.num_train_timesteps)
    except UsageError:
        return False
    return True


def _store(study, hit: dict) -> None:
    """Add one value to the study's cache, onto what is stored now (another report may have
    added values since this one read it)."""
    study.set_user_attr(HELDOUT_FID_ATTR, [*_stored(study), hit])


def _score(model, scorer, row, batch, solver) -> float | None:
    try:
        return score_schedule(model, scorer, tuple(row.timesteps), batch, solver,
                              skip=[tuple(s) for s in row.skip])
    except FIDError:  # non-finite samples: the table says n/a, as the search records FAIL
        return None
