"""The CLI contract: exit codes, one-line errors, nothing half-created."""

import json

import optuna
import pytest
from helpers import error_line

from autodiff_optuna.cli import main
from autodiff_optuna.search.fidelity import is_carried

FAST = ["--samples", "80", "--population", "3", "--quiet", "--solver", "ddim", "--stage", "1"]



@pytest.mark.parametrize("argv, message", [
    (["study", "--model", "digits", "--steps", "0"], "--steps"),
    (["study", "--model", "digits", "--steps", "1000"], "[1, 999]"),
    (["study", "--model", "digits", "--steps", "four"], "invalid int"),
    (["study", "--model", "nope", "--steps", "4"], "known models: digits"),
    (["study", "--model", "digits", "--steps", "4", "--samples", "64"], "feature dimension"),
    (["study", "--model", "digits", "--steps", "4", "--max-gflops", "nan"], "--max-gflops"),
    (["evaluate", "--model", "digits", "--timesteps", "9,3", "--samples", "0"], "--samples"),
    (["study", "--model", "digits", "--steps", "4", "--solver", "euler"], "invalid choice"),
    (["study", "--model", "digits", "--steps", "4", "--sampler", "gp"], "unknown sampler 'gp'"),
    (["evaluate", "--model", "digits", "--timesteps", "999,999,10"], "distinct"),
    (["evaluate", "--model", "digits", "--timesteps", "1200,10"], "outside"),
    (["evaluate", "--model", "digits", "--timesteps", "9x,3"], "comma-separated integers"),
    (["best", "--name", "x", "--storage", "sqlite:////no/such/dir/a.db"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    if argv[0] == "study":
        argv = argv + ["--storage", f"sqlite:///{tmp_path}/s.db"]
    assert main(argv) == 2
    assert message in error_line(capsys)
    if argv[0] == "study":  # no half-created study left behind
        assert not (tmp_path / "s.db").exists() or not optuna.get_all_study_names(
            f"sqlite:///{tmp_path}/s.db")


@pytest.mark.slow  # 10.3 s on the idle machine: out of the fast subset
def test_unreachable_and_foreign_storage(capsys, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all\n" * 10)
    before = junk.read_bytes()
    assert main(["study", "--model", "digits", "--steps", "4", "--storage",
                 f"sqlite:///{junk}"]) == 2
    assert "not an SQLite database" in error_line(capsys)
    assert junk.read_bytes() == before
    assert main(["study", "--model", "digits", "--steps", "4", "--storage",
                 "nosuchdialect://x/y"]) == 2
    assert "storage" in error_line(capsys)


@pytest.mark.slow  # 3.1 s on the idle machine: out of the fast subset
def test_best_lists_the_studies_that_exist(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "2", "--trials", "2", "--storage", url]
                + FAST) == 0
    capsys.readouterr()
    assert main(["best", "--name", "missing", "--storage", url]) == 2
    assert "studies there: digits-k2" in error_line(capsys)


@pytest.mark.slow  # 7.9 s on the idle machine: out of the fast subset
def test_resume_and_configuration_mismatch(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    base = ["study", "--model", "digits", "--steps", "3", "--storage", url] + FAST
    assert main(base + ["--trials", "4"]) == 0
    first = optuna.load_study(study_name="digits-k3", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    assert len(first) == 4
    assert main(base + ["--trials", "6"]) == 0  # the same command, a larger total: resumes
    study = optuna.load_study(study_name="digits-k3", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    assert [(t.params, t.value) for t in study.trials if t.number in {f.number for f in first}] \
        == [(t.params, t.value) for t in first]
    capsys.readouterr()
    mismatched = ["study", "--model", "digits", "--steps", "3", "--storage", url,
                  "--samples", "96", "--population", "3", "--name", "digits-k3", "--stage", "1"]
    assert main(mismatched) == 2  # not --quiet: refused before the estimate times the model
    captured = capsys.readouterr()
    assert "timing" not in captured.out and "estimate" not in captured.out, captured.out
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    assert "samples: stored 80, requested 96" in captured.err
    assert len(optuna.load_study(study_name="digits-k3", storage=url).trials) == len(study.trials)


@pytest.mark.slow  # a two-stage study
def test_what_stage_2_would_refuse_is_refused_before_stage_1_runs(capsys, tmp_path):
    """A resume whose stage 2 differs from the stored one, and a new study whose stage-2 name
    belongs to another program, are refused before stage 1 runs a trial or is even created."""
    url = f"sqlite:///{tmp_path}/s.db"
    base = ["study", "--model", "digits", "--steps", "3", "--storage", url, "--samples", "80",
            "--population", "3", "--quiet", "--solver", "ddim", "--stage2-trials", "2"]
    assert main(base + ["--trials", "4"]) == 0
    stage1 = optuna.load_study(study_name="digits-k3", storage=url)
    before = (len(stage1.trials), stage1.user_attrs["target"])
    capsys.readouterr()
    assert main(base + ["--trials", "6", "--max-gflops", "0.05"]) == 2
    assert "max_gflops: stored None, requested 0.05" in error_line(capsys)
    stage1 = optuna.load_study(study_name="digits-k3", storage=url)
    assert (len(stage1.trials), stage1.user_attrs["target"]) == before

    optuna.create_study(study_name="victim-stage2", storage=url)  # another program's
    assert main(base + ["--trials", "4", "--name", "victim"]) == 2
    assert "'victim-stage2'" in (line := error_line(capsys)) and "not made by" in line
    assert "victim" not in optuna.get_all_study_names(url)


@pytest.mark.slow  # three studies
def test_stage1_with_an_optuna_sampler_resumes_and_keeps_its_sampler(capsys, tmp_path):
    """``--sampler tpe``: Optuna's TPE drives stage 1 on the same encoding, after the same
    standard spacings; the choice is stored, so a resume must name it again, and a study stored
    before the choice existed resumes as the evolutionary one it was."""
    url = f"sqlite:///{tmp_path}/s.db"
    base = ["study", "--model", "digits", "--steps", "3", "--storage", url] + FAST
    assert main(base + ["--trials", "7", "--sampler", "tpe"]) == 0
    study = optuna.load_study(study_name="digits-k3", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 7
    spacings = study.user_attrs["spacings"]
    assert [t.user_attrs["timesteps"] for t in complete[:len(spacings)]] == list(
        spacings.values())
    assert main(base + ["--trials", "8", "--sampler", "tpe"]) == 0  # resumes
    capsys.readouterr()
    assert main(["best", "--name", "digits-k3", "--storage", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sampler"] == "tpe"
    assert main(base + ["--trials", "9"]) == 2  # the default sampler is another search
    assert "sampler: stored 'tpe', requested 'evolutionary'" in error_line(capsys)

    old = optuna.create_study(study_name="old", storage=url)  # as made before --sampler
    config = {k: v for k, v in study.user_attrs["config"].items() if k != "sampler"}
    for key, value in {**study.user_attrs, "config": config}.items():
        old.set_user_attr(key, value)
    assert main(base + ["--trials", "1", "--name", "old"]) == 0


@pytest.mark.slow  # a whole study, then best and evaluate
def test_end_to_end_study_best_and_evaluate(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    argv = ["study", "--model", "digits", "--steps", "4", "--trials", "7", "--samples", "80",
            "--population", "5", "--solver", "ddim", "--storage", url]
    assert main(argv + ["--stage", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("stage 1 [") for line in out) == 7  # a progress line per trial
    assert any(line.startswith("stage 1 done in ") for line in out)
    assert out[-1].startswith("done: digits-k4 in ") and "uniform FID" in out[-1]
    # stage 2 with --json: stdout is the result alone, and it is the one `best` gives
    assert main(argv + ["--stage", "2", "--stage2-trials", "2", "--json"]) == 0
    captured = capsys.readouterr()
    ran = json.loads(captured.out)
    assert ran["wall_seconds"] > 0 and ran["trials"]["stage2"]["complete"] == 2
    assert "stage 2 [   2/2]" in captured.err
    assert main(["best", "--storage", url, "--json"]) == 0
    assert {**ran, "wall_seconds": None} == {**json.loads(capsys.readouterr().out),
                                             "wall_seconds": None}
    assert main(["best", "--name", "digits-k4", "--storage", url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials"]["stage1"]["complete"] == 7 and summary["steps"] == 4
    assert summary["best"]["stage"] in (1, 2) and summary["export"]["fid"] <= summary["uniform"][
        "fid"]
    best = summary["best"]["timesteps"]
    assert best == sorted(set(best), reverse=True)
    assert summary["uniform"]["timesteps"] == [750, 500, 250, 0]
    # common random numbers: the stored search score is exactly the uniform schedule on the
    # study's noise; the reported FID is the mean of it and the confirmation's, on noise the
    # search never saw, and neither is evaluate's held-out noise
    from autodiff_optuna.metrics import load_scorer
    from autodiff_optuna.metrics.scoring import score_schedule
    from autodiff_optuna.models import load_model
    from autodiff_optuna.sampling import draw

    model = load_model("digits")
    again = score_schedule(model, load_scorer("digits"), (750, 500, 250, 0),
                           draw(model, 80, seed=0), "ddim")
    assert again == pytest.approx(summary["uniform"]["search_fid"], rel=1e-9)
    uniform = summary["uniform"]
    assert uniform["confirmed_fid"] != pytest.approx(again, rel=1e-6) and uniform["pooled"]
    assert uniform["fid"] == pytest.approx((uniform["confirmed_fid"] + again) / 2, rel=1e-9)
    assert main(["evaluate", "--model", "digits", "--timesteps", "750,500,250,0", "--samples",
                 "80", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    held_out = evaluated["fid"]
    assert held_out > 0 and held_out != pytest.approx(summary["uniform"]["fid"], rel=1e-6)
    # the uniform schedule itself: its own baseline, scored once
    assert evaluated["uniform_fid"] == held_out


def test_stage_two_needs_stage_one(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "3", "--stage", "2", "--storage", url]
                + FAST[:-2]) == 2
    assert "no study named 'digits-k3'" in error_line(capsys)


@pytest.mark.slow  # 5 s on a loaded machine: out of the fast subset
def test_evaluate_tells_a_margin_from_the_noise(capsys):
    import math

    from autodiff_optuna.reporting.evaluate import lines

    assert main(["evaluate", "--model", "digits", "--timesteps", "900,300", "--samples", "100",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fid_spread"] > 0 and result["uniform_fid_spread"] > 0
    assert result["difference"] == result["fid"] - result["uniform_fid"]
    # the paired spread (tests/test_fid.py shows it counts the shared noise) is a finite number
    assert 0 < result["difference_spread"] < math.inf
    out = "\n".join(lines(result))  # what evaluate prints without --json
    assert f"FID {result['fid']:.3f} ± {result['fid_spread']:.3f}" in out
    word = "lower" if result["difference"] < 0 else "higher"
    verdict = ("more than twice its spread" if abs(result["difference"])
               > 2 * result["difference_spread"] else "not told apart at this count")
    assert f"{abs(result['difference']):.3f} ± {result['difference_spread']:.3f} {word}" in out
    assert verdict in out


@pytest.mark.slow  # 9 s on a loaded machine (15 fixed samplers): out of the fast subset
def test_evaluate_against_every_fixed_sampler(capsys):
    from autodiff_optuna.reporting.evaluate import lines

    assert main(["evaluate", "--model", "digits", "--timesteps", "900,500,100", "--samples",
                 "100", "--solver", "dpmpp2m", "--against-fixed", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    fixed = result["fixed"]
    assert f"fixed sampler {len(fixed)}/{len(fixed)}" in captured.err  # progress, on stderr
    # DPM-Solver++(3M) runs as 2M at three steps: scored once, named beside it
    assert not any(r["solver"] == "dpmpp3m" for r in fixed)
    assert all("uniform dpmpp3m" in r["same_as"] for r in fixed
               if r["spacing"] == "uniform" and r["solver"] == "dpmpp2m")
    assert {(tuple(r["timesteps"]), r["solver"]) for r in fixed} >= {
        (tuple(result["uniform_timesteps"]), s) for s in ("ddim", "dpmpp2m", "unipc")}
    uniform = next(r for r in fixed if r["timesteps"] == result["uniform_timesteps"]
                   and r["solver"] == "dpmpp2m")
    assert uniform["fid"] == result["uniform_fid"]  # the same noise, sampled once
    scored = [r for r in fixed if r["fid"] is not None]
    assert result["best_fixed"] == min(scored, key=lambda r: r["fid"])
    for r in scored:
        assert r["difference"] == pytest.approx(result["fid"] - r["fid"], abs=1e-12)
        assert r["difference_spread"] > 0
    out = "\n".join(lines(result))
    assert f"the best of {len(scored)} fixed samplers" in out
    assert "than that best fixed sampler's on the same noise" in out


def test_evaluate_with_masks(capsys, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"skip": [["mid_block.attentions.0"], []]}))
    assert main(["evaluate", "--model", "digits", "--timesteps", "900,300", "--samples", "80",
                 "--skip", str(good), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skip"] == [["mid_block.attentions.0"], []] and result["gflops"] > 0
    for payload, message in [({"skip": [["nope"], []]}, "no layer named 'nope'"),
                             ({"skip": [[]]}, "1 masks for 2 time steps")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(payload))
        assert main(["evaluate", "--model", "digits", "--timesteps", "900,300",
                     "--skip", str(bad)]) == 2
        assert message in error_line(capsys)
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["evaluate", "--model", "digits", "--timesteps", "900,300",
                 "--skip", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in error_line(capsys)


@pytest.mark.slow  # 6.6 s on the idle machine: out of the fast subset
def test_export_and_sample_in_one_line(capsys, tmp_path):
    import autodiff_optuna

    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "3", "--trials", "3", "--storage", url,
                 "--stage2-trials", "4", "--samples", "80", "--population", "3", "--quiet"]) == 0
    out = tmp_path / "schedule.json"
    assert main(["export", "--name", "digits-k3", "--storage", url, "--out", str(out)]) == 0
    schedule = autodiff_optuna.load_schedule(out)
    summary = json.loads(out.read_text())
    assert schedule.model == "digits" and len(schedule.timesteps) == 3
    assert summary["provenance"]["study"].startswith("digits-k3")
    images = autodiff_optuna.sample(schedule, n=5)
    assert images.shape == (5, 1, 8, 8) and images.dtype.is_floating_point is False
    assert main(["sample", "--schedule", str(out), "--n", "9", "--out",
                 str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    assert main(["sample", "--schedule", str(tmp_path / "bad.json")]) == 2
    assert "not an autodiff-optuna schedule" in error_line(capsys)
    assert main(["export", "--name", "digits-k3", "--storage", url, "--out", str(out),
                 "--max-gflops", "0.000001"]) == 2
    assert "costs <=" in error_line(capsys)


@pytest.mark.slow  # a study of both stages, resumed
def test_stage_two_resumes(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    base = ["study", "--model", "digits", "--steps", "2", "--storage", url, "--samples", "80",
            "--population", "3", "--quiet", "--trials", "3"]
    assert main(base + ["--stage2-trials", "4"]) == 0
    assert main(base + ["--stage2-trials", "6"]) == 0  # the same command, larger: resumes
    stage2 = optuna.load_study(study_name="digits-k2-stage2", storage=url)
    searched = [t for t in stage2.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                if not is_carried(t)]  # stage 1's elites, carried with their scores, aside
    assert len(searched) == 6
    assert main(base + ["--stage", "2", "--stage2-trials", "6"]) == 0  # stage 2 alone


def test_every_command_and_flag_has_help(tmp_path):
    import argparse

    from autodiff_optuna.cli import build_parser
    from autodiff_optuna.models.registry import PRESETS
    from autodiff_optuna.search.config import DEFAULT_TRIALS, configure, load_preset
    from autodiff_optuna.storage import open_storage

    parser = build_parser()
    assert "`" not in parser.description
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helped = {choice.dest for choice in commands._choices_actions if choice.help}
    assert helped == set(commands.choices)
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        model = next((a for a in sub._actions if "--model" in a.option_strings), None)
        if model is not None:  # the registry's names, read when the help is shown
            shown = sub._get_formatter()._get_help_string(model)
            assert all(preset in shown for preset in PRESETS), name
        assert sub.description, f"{name} has no description"
        assert not sub.allow_abbrev, name  # --trial is not taken for --trials
        for action in sub._actions:  # every default is in the help, as the code has it
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert "default" in action.help and str(action.default).rstrip("0").rstrip(
                    ".") in action.help, f"{name} {action.option_strings}: {action.help}"
    assert not parser.allow_abbrev
    study = commands.choices["study"]
    helps = {a.option_strings[0]: a.help for a in study._actions if a.option_strings}
    preset = load_preset("digits", 4)
    for flag, key in (("--trials", "trials"), ("--samples", "samples"), ("--seed", "seed"),
                      ("--population", "population"), ("--stage2-trials", "stage2_trials"),
                      ("--min-samples", "min_samples"), ("--solver", "solver"),
                      ("--sampler", "sampler"), ("--noise-scale", "noise_scale"),
                      ("--step-moves", "step_moves")):
        # the preset's value, as configure takes it
        assert "default: from the model's preset" in helps[flag], flag
        assert key not in preset or f"digits-k4: {preset[key]};" in helps[flag], flag
    assert f"digits-k4: {preset['trials']}; without one, {DEFAULT_TRIALS}" in helps["--trials"]
    assert f"digits-k4: {preset['stage2_trials']}; without one, --trials" in helps[
        "--stage2-trials"]
    config, targets = configure("digits", 4)
    assert (targets.trials, targets.stage2_trials, config.population) == (
        preset["trials"], preset["stage2_trials"], preset["population"])
    # the preset's noise scale goes with its solver: another solver runs unscaled, unless asked
    assert config.noise_scale == preset["noise_scale"] != 1
    assert configure("digits", 4, solver=preset["solver"])[0].noise_scale == preset["noise_scale"]
    assert configure("digits", 4, solver="dpmpp2m")[0].noise_scale == 1
    assert configure("digits", 4, solver="dpmpp2m", noise_scale=1.01)[0].noise_scale == 1.01
    # a trial is retried once its heartbeat has been missed as often as the help says
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=10, writable=True)
    assert f"once {storage.grace_period // 10} beats are missed" in helps["--heartbeat"]
    # sample scores nothing: no FID reference or network flags
    sample = {f for a in commands.choices["sample"]._actions for f in a.option_strings}
    assert not {"--ref-stats", "--ref-images", "--ref-teacher", "--inception"} & sample
    assert "--checkpoint" in sample


@pytest.mark.parametrize("argv, message", [
    (["study", "--model", "digits", "--steps", "4", "--trial", "5"],
     "autodiff_optuna study: unrecognized argument '--trial'; did you mean --trials?"),
    (["study", "--model", "digits", "--steps", "4", "--stage2-trial=5"],
     "did you mean --stage2-trials?"),
    (["best", "--jsn"], "autodiff_optuna best: unrecognized argument '--jsn'; did you mean "
                        "--json?"),
    (["report", "--heldout", "3"], "did you mean --heldout-samples?"),
    (["sample", "--ref-stats", "x.npz"], "autodiff_optuna sample: unrecognized argument "
                                         "'--ref-stats'"),
    (["list", "extra"], "autodiff_optuna list: unrecognized argument 'extra' (usage: "
                        "'autodiff_optuna list --help' lists its flags)"),
])
def test_a_misspelled_or_abbreviated_flag_names_the_command_and_the_nearest(argv, message,
                                                                           capsys):
    assert main(argv) == 2
    assert message in error_line(capsys)


def test_reading_commands_name_the_study_as_study_does(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(study_name="other", storage=url)
    for command in ("best", "export", "report", "delete"):
        assert main([command, "--storage", url, "--model", "digits-deep", "--steps", "6"]) == 2
        assert "no study named 'digits-deep-k6'" in capsys.readouterr().err


def test_dashboard_host_is_an_address(capsys):
    assert main(["dashboard", "--host", "example.org"]) == 2
    assert "--host must be an IP address" in capsys.readouterr().err
