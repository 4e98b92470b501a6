"""Stage 1's moves in noise levels: the kept studies of ``bench/streams.py`` (the presets as
they ship and the cheaper protocol, digits seeds 0-4, digits-deep seeds 0-2, steps drawn and
moved in training steps) run again with the sampler drawing and moving steps in the model's
noise levels (``sampling.schedules.noise_coordinates``), each export scored on the same five
held-out streams; a difference is paired (same noise both sides) stream by stream.

    python -m bench.noise_moves [DIR]   # each job through ``bench.protocol.study_job`` into DIR
                                        # (default /tmp/bench-noise-moves; kept as
                                        # DIR/jobs/<job>.json, so an interrupted run resumes),
                                        # then results.json["noise_moves"] and the BENCHMARKS.md
                                        # section "noise-moves"
    python -m bench.noise_moves --render   # the section again from results.json
"""

import json
import statistics
import sys
from pathlib import Path

from bench.protocol import STEPS, study_job
from bench.solvers import _commit
from bench.streams import KEY as STREAMS_KEY
from bench.streams import _Streams, _study, paired

KEY, SECTION = "noise_moves", "noise-moves"
DEFAULT_DIR = Path("/tmp/bench-noise-moves")
SEEDS = {"digits": (0, 1, 2, 3, 4), "digits-deep": (0, 1, 2)}
PROTOCOLS = {"shipped": "the preset", "cheap_shipped": "cheaper"}
# every job moves steps in noise levels (at cb01cdc, where the table's ran, every study did;
# since, only the digits-k3 and digits-k4 presets do by themselves)
MOVES = ("--step-moves", "noise")
# ... and the preset's jobs bred in generations of 20, as digits-k4 did until bench/generations.py
EXTRA = {"shipped": ("--population", "20")}
BEST_FIXED = "uniform iPNDM, noise / 1.015"  # the strongest fixed sampler on both models
# where the studies before were searched (bench/protocol.py's runs, and bench/streams.py's two
# added seeds)
BEFORE_CODE = "searched at `40fbb31`, digits seeds 3 and 4 at `6038412`"
PATIENCE_NOTE = ("the digits preset's with stage 2's patience, as it ships (the same jobs at "
                 "`d771760`, the same exports: \"Since: stage 2's patience\"), the others as run")


def jobs() -> list[tuple[str, str, int]]:
    """Digits first (faster), its presets first: the pairs a reader needs most come early."""
    return [(model, protocol, seed) for model in SEEDS for protocol in PROTOCOLS
            for seed in SEEDS[model]]


def run_jobs(folder: Path) -> None:
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for model, protocol, seed in jobs():
        path = folder / "jobs" / f"{model}-{protocol}-s{seed}.json"
        if not path.exists():
            path.write_text(json.dumps(study_job(model, protocol, seed, folder,
                                                     (*MOVES, *EXTRA.get(protocol, ())))))


def measure(folder: Path, before: dict) -> dict:
    entry = {"commits": [], "scored_at": _commit(),
             "streams": before["streams"], "models": {}}
    for model in SEEDS:
        streams = _Streams(model)
        studies = {}
        for path in sorted((folder / "jobs").glob(f"{model}-*.json")):
            run = json.loads(path.read_text())
            if run["model"] != model:
                continue
            db = folder / f"{model}-{run['protocol']}-s{run['seed']}.db"
            studies[f"{run['protocol']}:{run['seed']}"] = {
                **_study(streams, db, model), "images": run["images"], "cpu_s": run["cpu_s"]}
            if run["commit"] not in entry["commits"]:  # the code each study ran
                entry["commits"].append(run["commit"])
        entry["models"][model] = {"studies": studies}
    return entry


def markdown(entry: dict, before: dict, images_with_patience: dict) -> str:
    lines = [f"Each FID is the mean over the {len(entry['streams'])} held-out streams of "
             f"`bench/streams.py` (1797 images each); a difference is paired stream by stream, "
             f"± its standard error over the streams. Before: the studies of \"The same answers "
             f"on five held-out streams\" ({BEFORE_CODE}; steps moved in training steps); "
             f"after: the same jobs, steps moved in noise levels (code "
             f"{', '.join(f'`{c}`' for c in entry['commits'])}). Images before: {PATIENCE_NOTE}."
             f" `python -m bench.noise_moves`.", ""]
    for model, m in entry["models"].items():
        old = before["models"][model]
        ceiling = statistics.mean(old["ceiling"])
        fixed = old["fixed"][BEST_FIXED]
        lines += [f"**{model}, K={STEPS}** (ceiling, 100-step DDIM: {ceiling:.2f}; {BEST_FIXED}: "
                  f"{statistics.mean(fixed):.2f}).", "",
                  "| study | seed | before: export | mean | after: export | mean | after − before"
                  " | after − best fixed | images before / after |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for protocol, label in PROTOCOLS.items():
            afters, befores = [], []
            for key in sorted(k for k in m["studies"] if k.split(":")[0] == protocol):
                new, was = m["studies"][key], old["studies"].get(key)
                if was is None:
                    continue
                afters.append(statistics.mean(new["fids"]))
                befores.append(statistics.mean(was["fids"]))
                diff, se = paired(new["fids"], was["fids"])
                vs_fixed, se_fixed = paired(new["fids"], fixed)
                images = images_with_patience.get(f"{model}:{key}", was["images"])
                lines.append(
                    f"| {label} | {key.split(':')[1]} | {_point(was)} | {befores[-1]:.2f} | "
                    f"{_point(new)} | {afters[-1]:.2f} | {diff:+.2f} ± {se:.2f} | "
                    f"{vs_fixed:+.2f} ± {se_fixed:.2f} | {images:,} / {new['images']:,} |")
            if afters:
                lines.append(f"| {label}, mean | | | {statistics.mean(befores):.2f} "
                             f"({statistics.mean(befores) / ceiling:.2f}x) | | "
                             f"{statistics.mean(afters):.2f} "
                             f"({statistics.mean(afters) / ceiling:.2f}x) | | | |")
        lines.append("")
    return "\n".join(lines)


def _point(study: dict) -> str:
    steps = ", ".join(map(str, study["timesteps"]))
    share = study["gflops_share"]
    return f"[{steps}]" + ("" if share >= 0.9995 else f" at {share:.1%}")


def main(argv: list[str]) -> None:
    from bench.run import RESULTS, save_part

    results = json.loads(RESULTS.read_text())
    before = results[STREAMS_KEY]
    if argv[:1] == ["--render"]:
        entry = results[KEY]
    else:
        folder = Path(argv[0]) if argv else DEFAULT_DIR
        run_jobs(folder)
        entry = measure(folder, before)
    with_patience = {f"{r['model']}:{r['protocol']}:{r['seed']}": r["images"]
                     for r in results.get("stage2_patience", {}).get("runs", [])}
    save_part(KEY, entry, SECTION, markdown(entry, before, with_patience))
    print(f"updated bench/results.json ({KEY}) and BENCHMARKS.md ({SECTION})")


if __name__ == "__main__":
    main(sys.argv[1:])
