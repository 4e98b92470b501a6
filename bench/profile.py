"""Where a digits trial's time goes: a cProfile of real stage-1 trials, grouped by stage.

The trials run through the library's own search path (``open_stage1`` / ``run`` on an SQLite
study, preset sample count); each group is the cumulative time of the functions that implement
it, and ``storage and bookkeeping`` is what is left of the trials' wall time (Optuna's storage,
the sampler, the objective's checks, callbacks).
"""

import cProfile
import io
import pstats
import tempfile
import time

import optuna

from autodiff_optuna import search
from autodiff_optuna.search.config import SearchConfig, load_preset

optuna.logging.set_verbosity(optuna.logging.ERROR)

# group -> (module path fragment, function name) pairs whose cumulative time it sums; none of
# them calls another group's functions, so the groups do not overlap
GROUPS = {
    "network (UNet forward)": [("models/diffusers_unet.py", "predict_noise")],
    "solver (scheduler steps)": [("scheduling_dpmsolver_multistep.py", "step"),
                                 ("sampling/solvers.py", "make_scheduler")],
    "FID features (clean-fid batches through the digits CNN)": [("metrics/fid.py", "features")],
    "Frechet distance": [("metrics/fid.py", "fid_from_features")],
    "sampler (EvolutionarySampler)": [("search/evolutionary.py", "sample_relative"),
                                      ("search/evolutionary.py", "before_trial")],
}


def profile_trials(steps: int = 4, trials: int = 6) -> dict:
    """Profile ``trials`` trials after the queued standard spacings (so the sampler works)."""
    samples = load_preset("digits", steps).get("samples", 1000)
    ctx = search.SearchContext.build(SearchConfig("digits", steps, samples=samples))
    with tempfile.TemporaryDirectory() as tmp:
        study = search.open_stage1(ctx, "profile", f"sqlite:///{tmp}/profile.db")
        warm = len(ctx.spacings)
        search.run(ctx, study, warm, progress=False)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        search.run(ctx, study, warm + trials, progress=False)
        profiler.disable()
        wall = (time.perf_counter() - started) / trials
    stats = pstats.Stats(profiler)
    groups = {}
    for group, functions in GROUPS.items():
        groups[group] = sum(cumulative for (path, _, name), (_, _, _, cumulative, _)
                            in stats.stats.items()
                            if any(path.endswith(p) and name == f for p, f in functions)) / trials
    groups["storage and bookkeeping (the rest)"] = wall - sum(groups.values())
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    return {"steps": steps, "samples": samples, "trials": trials, "trial_s": wall,
            "groups_s": groups, "top_tottime": text.getvalue()}
