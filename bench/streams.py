"""Held out on five streams: the answers of whole studies (``bench/protocol.py``'s kept studies)
and the fixed samplers a user could pick instead, each scored on ``STREAMS`` held-out noise
streams of ``SAMPLES`` images (1797: all of the digits reference's images), no study having
searched or confirmed on any of them.

One held-out stream is one draw: on the digits models a schedule's FID moves from one stream to
the next by more than the margins the issues ask about (the preset study of seed 0 scores 1.90
on stream 0 and 5.04 on stream 3), and the stream that was the benchmarks' only one (seed 0) is
the kindest of the five to every sampler. A FID here is the mean over the streams; a margin
is the mean of the per-stream differences (the same noise for both sides) with its standard
error over the streams.

    python -m bench.streams [PROTOCOL_DIR [PROBE_DIR]]   (--render: the section again from
                                                        results.json, nothing measured)
        # PROTOCOL_DIR (default /tmp/bench-protocol): the kept jobs' databases; PROBE_DIR
        # (default /tmp/bench-tpe): the exported schedules of the per-step search against TPE
        # (``k<K>-<ours|tpe>-s<seed>.json``); writes results.json["heldout_streams"] and the
        # BENCHMARKS.md section "heldout-streams"
"""

import json
import math
import statistics
import sys
from pathlib import Path

from bench.protocol import DEFAULT_DIR, MODELS, STEPS, _best
from bench.solvers import _commit

KEY, SECTION = "heldout_streams", "heldout-streams"
STREAMS = (0, 1, 2, 3, 4)
SAMPLES = 1797
# the presets as they ship, and the cheaper protocol (40 + 10 trials, population 10, 500 images)
PROTOCOLS = {"shipped": "the preset", "cheap_shipped": "cheaper"}
DEFAULT_PROBE_DIR = Path("/tmp/bench-tpe")
CEILING_STEPS = 100  # the issues' ceiling: the model's own 100-step DDIM
# fixed samplers at K = STEPS, uniform spacing: (label, solver name, noise scale)
FIXED = (("uniform DDIM", "ddim", 1.0), ("uniform DPM-Solver++(2M)", "dpmpp2m", 1.0),
         ("uniform UniPC", "unipc", 1.0), ("uniform iPNDM", "ipndm", 1.0),
         ("uniform iPNDM, noise / 1.015", "ipndm", 1.015))


class _Streams:
    """One model's scorer and its held-out streams, loaded once; each schedule sampled once."""

    def __init__(self, model_name: str, kept: Path | None = None):
        """``kept``: a JSON file of FIDs scored before, read here and written after each new one
        (a long measurement that stops resumes without sampling them again)."""
        from autodiff_optuna.metrics import load_scorer
        from autodiff_optuna.models import load_model
        from autodiff_optuna.sampling import HELDOUT, draw

        self.model_name = model_name
        self.model, self.scorer = load_model(model_name), load_scorer(model_name)
        self.batches = [draw(self.model, SAMPLES, seed, HELDOUT) for seed in STREAMS]
        self.kept = kept
        self.cache: dict[str, list[float]] = (
            json.loads(kept.read_text()) if kept is not None and kept.exists() else {})

    def fids(self, timesteps, solver, skip=None) -> list[float]:
        """Per stream, the FID of ``timesteps`` sampled by ``solver`` (a name, or JSON rules)."""
        from autodiff_optuna.metrics.scoring import score_schedule

        skip = [tuple(s) for s in skip] if skip else None
        key = json.dumps([list(timesteps), skip, solver])
        if key not in self.cache:
            self.cache[key] = [float(score_schedule(self.model, self.scorer, tuple(timesteps),
                                                    batch, solver, skip=skip))
                               for batch in self.batches]
            if self.kept is not None:
                self.kept.write_text(json.dumps(self.cache))
        return self.cache[key]

    def fixed(self, solver: str, scale: float, steps: int) -> list[float]:
        from autodiff_optuna.sampling import standard_spacings
        from autodiff_optuna.search.context import alphas_cumprod
        from autodiff_optuna.search.results import study_solver

        uniform = standard_spacings(steps, self.model.num_train_timesteps,
                                    alphas_cumprod(self.model))["uniform"]
        rules = study_solver({"model": self.model_name, "solver": solver, "noise_scale": scale,
                              "steps": steps})
        return self.fids(uniform, rules)


def _study(streams: _Streams, db: Path, model: str) -> dict:
    """A kept study's export (its ``best --json``) scored on every stream."""
    from autodiff_optuna.search.config import study_name
    from autodiff_optuna.search.results import study_solver

    best = _best(study_name(model, STEPS), f"sqlite:///{db}")
    point = best["export"] or best["best"]
    config = {k: v for k, v in best.items() if v is not None}
    return {"timesteps": point["timesteps"], "gflops_share": point["gflops_share"],
            "rules": point.get("rules"),
            "fids": streams.fids(point["timesteps"], study_solver(config, point.get("rules")),
                                 point["skip"])}


def _probes(streams: _Streams, folder: Path) -> dict:
    """The exported schedules of the ours-against-TPE probe (digits, K = ``STEPS``), each
    scored on every stream: variant -> seed -> FIDs."""
    from autodiff_optuna.export import read_schedule

    probes: dict[str, dict[int, list[float]]] = {}
    for path in sorted(Path(folder).glob(f"k{STEPS}-*-s*.json")):
        variant, seed = path.stem.split("-")[1], int(path.stem.rsplit("-s", 1)[1])
        schedule = read_schedule(path)
        probes.setdefault(variant, {})[seed] = streams.fids(schedule.timesteps, schedule.solver,
                                                            schedule.skip)
    return probes


def measure(folder: Path = DEFAULT_DIR, probe_folder: Path = DEFAULT_PROBE_DIR) -> dict:
    entry = {"streams": list(STREAMS), "samples": SAMPLES, "steps": STEPS, "commit": _commit(),
             "models": {}}
    for model in MODELS:
        streams = _Streams(model)
        fixed = {label: streams.fixed(solver, scale, STEPS) for label, solver, scale in FIXED}
        ceiling = streams.fixed("ddim", 1.0, CEILING_STEPS)
        studies = {}
        for path in sorted((Path(folder) / "jobs").glob(f"{model}-*.json")):
            run = json.loads(path.read_text())
            db = Path(folder) / f"{model}-{run['protocol']}-s{run['seed']}.db"
            if run["model"] != model or run["protocol"] not in PROTOCOLS or not db.exists():
                continue
            study = {**_study(streams, db, model), "protocol": run["protocol"],
                     "seed": run["seed"], "images": run["images"]}
            studies[f"{run['protocol']}:{run['seed']}"] = study
            print(f"  {model} {run['protocol']} seed {run['seed']}: {_mean(study['fids']):.3f}",
                  flush=True)
        entry["models"][model] = {"fixed": fixed, "ceiling": ceiling, "studies": studies}
        if model == "digits":
            entry["models"][model]["probes"] = _probes(streams, probe_folder)
    return entry


def _mean(values) -> float:
    return statistics.mean(values)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """The mean of the per-stream differences ``a - b``, and its standard error over them."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.mean(differences), statistics.stdev(differences) / math.sqrt(len(a))


def markdown(entry: dict) -> str:
    n = len(entry["streams"])
    lines = [f"Each FID is the mean over {n} held-out noise streams (seeds "
             f"{', '.join(map(str, entry['streams']))}; {entry['samples']} images each, against "
             "all 1797 real digits); a margin is the mean of the per-stream differences, same "
             f"noise for both sides, ± its standard error over the {n} streams. "
             f"`python -m bench.streams`, code `{entry['commit']}`.", ""]
    for model, m in entry["models"].items():
        ceiling = _mean(m["ceiling"])
        best_label = min(m["fixed"], key=lambda label: _mean(m["fixed"][label]))
        best = m["fixed"][best_label]
        lines += [f"**{model}, K={entry['steps']}.** The ceiling, the model's own "
                  f"{CEILING_STEPS}-step DDIM: {ceiling:.2f} (per stream "
                  f"{_per_stream(m['ceiling'])}). Fixed samplers:", "",
                  "| sampler | per stream | mean | / ceiling |", "|---|---|---|---|"]
        for label, fids in m["fixed"].items():
            lines.append(f"| {label} | {_per_stream(fids)} | {_mean(fids):.2f} | "
                         f"{_mean(fids) / ceiling:.2f}x |")
        lines += ["", "| study | seed | images | export (GFLOPs) | per stream | mean | / ceiling "
                  f"| − {best_label} |", "|---|---|---|---|---|---|---|---|"]
        for study in m["studies"].values():
            difference, error = paired(study["fids"], best)
            lines.append(f"| {PROTOCOLS[study['protocol']]} | {study['seed']} | "
                         f"{study['images']:,} | {study['gflops_share']:.1%} | "
                         f"{_per_stream(study['fids'])} | {_mean(study['fids']):.2f} | "
                         f"{_mean(study['fids']) / ceiling:.2f}x | {difference:+.2f} ± "
                         f"{error:.2f} |")
        lines += ["", *_cheap_against_shipped(m["studies"]), *_ours_against_tpe(m), ""]
    return "\n".join(lines).rstrip() + "\n"


def _cheap_against_shipped(studies: dict) -> list[str]:
    """Issue 29's comparison, seed by seed: the cheaper protocol's export against the
    preset's, by their means over the streams."""
    lines = []
    for cheap in studies.values():
        if cheap["protocol"] != "cheap_shipped":
            continue
        shipped = studies.get(f"shipped:{cheap['seed']}")
        if shipped is None:
            continue
        difference, error = paired(cheap["fids"], shipped["fids"])
        lines.append(f"- seed {cheap['seed']}: the cheaper protocol "
                     f"{_mean(cheap['fids']):.2f} against the preset's {_mean(shipped['fids']):.2f}"
                     f" ({_mean(cheap['fids']) / _mean(shipped['fids']):.2f}x; paired "
                     f"{difference:+.2f} ± {error:.2f}), with "
                     f"{shipped['images'] / cheap['images']:.1f}x fewer images")
    return lines


def _ours_against_tpe(m: dict) -> list[str]:
    """Issue 27's ours against TPE over the same per-step space: every seed's pair, paired
    over seeds and streams alike."""
    ours, tpe = m.get("probes", {}).get("ours", {}), m.get("probes", {}).get("tpe", {})
    seeds = sorted(set(ours) & set(tpe))
    if not seeds:
        return []
    a = [f for s in seeds for f in ours[s]]
    b = [f for s in seeds for f in tpe[s]]
    difference, error = paired(a, b)
    return [f"- ours against TPE over the per-step space (the TPE probe of \"Since: iPNDM's "
            f"rules in the per-step search\", K={STEPS}; search seeds "
            f"{', '.join(map(str, seeds))}): ours " + ", ".join(f"{_mean(ours[s]):.2f}"
                                                              for s in seeds)
            + ", TPE " + ", ".join(f"{_mean(tpe[s]):.2f}" for s in seeds)
            + f"; ours − TPE {difference:+.2f} ± {error:.2f} over the {len(a)} (seed, stream) "
            "pairs (a standard error that takes the pairs as independent)"]


def _per_stream(fids: list[float]) -> str:
    return ", ".join(f"{f:.2f}" for f in fids)


def main(argv: list[str]) -> None:
    from bench.run import RESULTS, save_part

    if argv[:1] == ["--render"]:  # the section again from results.json, nothing measured
        entry = json.loads(RESULTS.read_text())[KEY]
        save_part(KEY, entry, SECTION, markdown(entry))
        return
    entry = measure(Path(argv[0]) if argv else DEFAULT_DIR,
                    Path(argv[1]) if len(argv) > 1 else DEFAULT_PROBE_DIR)
    save_part(KEY, entry, SECTION, markdown(entry))
    print(f"updated bench/results.json ({KEY}) and BENCHMARKS.md ({SECTION})")


if __name__ == "__main__":
    main(sys.argv[1:])
