"""The searches of ``make bench`` as independent jobs, so several cores run them at once.

    python -m bench.jobs list [PART ...]      # one job per line: samplers, spacings_table,
                                              # multifidelity, end_to_end (default: all)
    python -m bench.jobs run DIR JOB          # one job, its result as DIR/JOB.json
    python -m bench.jobs merge DIR            # fold finished jobs into bench/results.json (a
                                              # part, or one sampler, once all its jobs are
                                              # done) and rewrite BENCHMARKS.md

``make bench-jobs JOBS=N PARTS=...`` runs them N at a time, one torch thread each. A job's result
is exactly what the serial ``make bench`` computes for it (the same ``bench.search`` function);
only the wall times differ, since jobs share the machine. A finished job is not run again, so an
interrupted run continues where it stopped.
"""

import json
import sys
from pathlib import Path

from bench import search

PARTS = ("samplers", "spacings_table", "multifidelity", "end_to_end")


def jobs(part: str) -> list[str]:
    if part == "samplers":
        return [f"sampler-{name}-{seed}" for name in search.SAMPLERS
                for seed in search.SAMPLER_SEEDS]
    if part == "spacings_table":
        return [f"spacings-{k}-{seed}" for k in search.SPACINGS_KS for seed in search.SEEDS]
    if part == "multifidelity":  # its unpruned searches are the evolutionary sampler runs
        return [f"pruned-{seed}" for seed in search.SEEDS]
    if part == "end_to_end":  # the default sampler's runs are the spacings table's at K=4
        return [f"endtoend-{name}-{seed}" for name in search.END_TO_END_SAMPLERS
                for seed in search.SEEDS]
    _bad_input(f"no searches in part {part!r} (one of {', '.join(PARTS)})")


def run(job: str) -> dict:
    kind, *args = job.split("-")
    if kind == "sampler":
        return search.sampler_run(args[0], int(args[1]))
    if kind == "spacings":
        return search.spacings_search(int(args[0]), int(args[1]))
    if kind == "pruned":
        return search.fidelity_run(int(args[0]), pruned=True)
    if kind == "endtoend":
        return search.spacings_search(4, int(args[1]), args[0])
    _bad_input(f"unknown job {job!r} (see: python -m bench.jobs list)")


def merge(folder: Path) -> list[str]:
    """Every part whose jobs have all finished, recomputed from them into bench/results.json;
    the parts it updated."""
    from bench import run as bench_run

    done = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    results = json.loads(bench_run.RESULTS.read_text()) if bench_run.RESULTS.exists() else {}
    merged = []
    # a sampler whose seeds have all run replaces its entry; the others keep theirs
    rerun = [name for name in search.SAMPLERS
             if all(f"sampler-{name}-{seed}" in done for seed in search.SAMPLER_SEEDS)]
    if rerun:
        kept = [r for name, entry in results.get("samplers", {}).items() if name not in rerun
                for r in entry["runs"]]
        results["samplers"] = search.summarise_samplers(
            kept + [done[f"sampler-{name}-{seed}"] for name in rerun
                    for seed in search.SAMPLER_SEEDS])
        merged.append(f"samplers ({', '.join(rerun)})")
    if all(j in done for j in jobs("spacings_table")):
        results["spacings_table"] = {
            str(k): search.spacings_row(k, [done[f"spacings-{k}-{seed}"] for seed in search.SEEDS])
            for k in search.SPACINGS_KS}
        merged.append("spacings_table")
    if all(j in done for j in jobs("multifidelity")) and "samplers" in results:
        results["multifidelity"] = search.multifidelity(
            unpruned=results["samplers"]["evolutionary"]["runs"],
            pruned=[done[j] for j in jobs("multifidelity")])
        merged.append("multifidelity")
    if all(j in done for j in jobs("end_to_end")):
        results["end_to_end"] = search.end_to_end(
            searches=[done[j] for j in jobs("end_to_end")])
        merged.append("end_to_end")
    if merged:
        results["machine"] = bench_run.machine()
        bench_run.save(results)
    return merged


def _bad_input(message: str) -> None:
    print(f"bench.jobs: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    command, args = sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]
    arguments = {"list": len(args), "run": 2, "merge": 1}  # how many each command takes
    if arguments.get(command) != len(args):
        _bad_input("usage: list [PART ...] | run DIR JOB | merge DIR")
    if command == "list":
        print("\n".join(j for part in args or PARTS for j in jobs(part)))
    elif command == "run":
        folder, job = Path(args[0]), args[1]
        out = folder / f"{job}.json"
        if not out.exists():
            folder.mkdir(parents=True, exist_ok=True)
            result = run(job)
            partial = out.with_suffix(".part")
            partial.write_text(json.dumps(result) + "\n")
            partial.rename(out)  # a killed job leaves no half-written result
    else:
        merged = merge(Path(args[0]))
        print(f"merged: {', '.join(merged) or 'nothing (no part has all its jobs)'}")


if __name__ == "__main__":
    main()
