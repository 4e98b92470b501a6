"""Per-trial storage overhead: everything a trial costs but sampling and FID.

The real search path (EvolutionarySampler, the study's objective with its duplicate and surplus
checks, Optuna's RDB storage, the run loop's callbacks) runs with a synthetic score in place of
sampling + FID, and the wall time between consecutive finished trials is recorded. Reported: the
median over the last trials before the study holds ``n`` trials.
"""

import time
import uuid

import numpy as np
import optuna

from autodiff_optuna import search
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)


def per_trial_overhead(url: str, n: int = 1000, window: int = 50) -> dict:
    ctx = search.SearchContext.build(SearchConfig("digits", 4, samples=65, population=20))
    name = f"overhead-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url, heartbeat=10, on_stale_trial=search.retry_stale_trial,
                                  writable=True)  # as `study` opens it
    study = search.open_stage1(ctx, name, storage)
    target = np.array([900, 600, 300, 100])
    stamps = []

    def synthetic(candidate):  # stands in for sampling + FID
        return float(np.abs(np.array(candidate.timesteps) - target).sum())

    search.run(ctx, study, n, progress=False, score=synthetic,
               callbacks=[lambda s, t: stamps.append(time.perf_counter())])
    gaps = np.diff(stamps)
    optuna.delete_study(study_name=name, storage=study._storage)
    return {"trials": n, "median_ms_last": float(np.median(gaps[-window:]) * 1e3),
            "median_ms_first": float(np.median(gaps[:window]) * 1e3)}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="per-trial storage overhead")
    parser.add_argument("url")
    parser.add_argument("trials", type=int, nargs="?", default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON line (for bench.run)")
    args = parser.parse_args()
    result = per_trial_overhead(args.url, args.trials)
    print(json.dumps(result) if args.json else result)
