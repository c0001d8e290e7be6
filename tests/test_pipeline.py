"""The main job: stages, caching, resuming, refusal of foreign folders, and the CLI."""

import json

import pytest
from conftest import build_tiny_llama
from safetensors import safe_open

from harmcircuit import cli
from harmcircuit.masks import load_selections
from harmcircuit.pipeline import conditions as conditions_module
from harmcircuit.pipeline import weights as weights_module
from harmcircuit.pipeline.claims import _fmt_rate, summary_lines
from harmcircuit.pipeline.config import quick_config
from harmcircuit.pipeline.run import run_pipeline
from harmcircuit.pipeline.store import RunFolderError


def tiny_config(**overrides):
    """A run small enough for a random 2-layer model: a few prompts, large sparsities."""
    settings = dict(
        model="tiny",
        harmful=("harmbench",),
        benign=("builtin",),
        sparsities=(0.01, 0.05),
        headline_sparsity=0.01,
        harmful_per_category=2,
        benign_per_category=2,
        response_tokens=6,
        generation_prompts=4,
        generation_tokens=4,
        factual_pairs=6,
        mmlu_items=0,
        recognition_per_class=4,
        transfer_categories=2,
        bootstrap_resamples=50,
        batch_size=4,
    )
    settings.update(overrides)
    return quick_config(**settings)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    model = build_tiny_llama(seed=3)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_pipeline(tiny_config(), out, progress=False, model=model)
    return model, out, result


def test_run_writes_outputs(tiny_run):
    _, out, _ = tiny_run
    for name in ("report.html", "metrics.json", "masks.safetensors", "run.log", "timings.json"):
        assert (out / name).is_file(), name
    leftovers = [p.name for p in out.rglob(".*") if p.is_file()]
    assert leftovers == []
    assert "harm set at" in (out / "run.log").read_text()
    # Outputs are written through private (0600) temporary files, but the results must be
    # readable by others, as the report is.
    for name in ("report.html", "metrics.json", "masks.safetensors", "timings.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_metrics_structure_is_consistent(tiny_run):
    _, out, result = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    config = tiny_config()
    assert set(metrics["conditions"]) == {
        "unpruned",
        "harm@1e-02",
        "control@1e-02",
        "harm@5e-02",
        "control@5e-02",
    }
    for sparsity in config.sparsities:
        label = f"{sparsity:.0e}"
        harm = metrics["conditions"][f"harm@{label}"]
        control = metrics["conditions"][f"control@{label}"]
        assert harm["n_weights"] == control["n_weights"]
        assert harm["n_weights"] == max(1, round(sparsity * metrics["model"]["n_scored_weights"]))
        assert 0.0 <= harm["set"]["raw_in_benign_top"] <= 1.0
        estimate = harm["delta_harmful_nll"]
        assert estimate["low"] <= estimate["value"] <= estimate["high"]
    unpruned = metrics["conditions"]["unpruned"]
    assert unpruned["delta_harmful_nll"]["value"] == 0.0
    assert "compliance_rate" in metrics["conditions"]["harm@1e-02"]
    assert "compliance_rate" not in metrics["conditions"]["harm@5e-02"]
    assert [claim["claim"] for claim in metrics["claims"]][:4] == [
        "Compact",
        "Unified across harm types",
        "Distinct from benign capability",
        "Generation is dissociated from recognition",
    ]
    assert len(metrics["transfer"]["harm_delta_nll"]) == len(metrics["transfer"]["categories"])
    assert metrics["model"]["fingerprint"] == result.metrics["model"]["fingerprint"]
    assert len(result.summary) == len(metrics["claims"])


def test_masks_file_matches_metrics(tiny_run):
    model, out, _ = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    selections = load_selections(out / "masks.safetensors", model)
    for name, entry in metrics["conditions"].items():
        if name != "unpruned":
            assert len(selections[name]) == entry["n_weights"]
            harm_name = name.replace("control@", "harm@")
            assert selections[name].count_per_matrix() == selections[harm_name].count_per_matrix()
    with safe_open(out / "masks.safetensors", "pt") as handle:
        assert handle.metadata()


def test_resume_reuses_every_stage(tiny_run, monkeypatch):
    model, out, result = tiny_run

    def fail(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(weights_module, "snip", fail)
    monkeypatch.setattr(weights_module, "attribute", fail)
    monkeypatch.setattr(conditions_module, "response_nll", fail)
    monkeypatch.setattr(conditions_module, "generation_eval", fail)
    before = (out / "metrics.json").read_bytes()
    again = run_pipeline(tiny_config(), out, resume=True, progress=False, model=model)
    assert (out / "metrics.json").read_bytes() == before
    assert again.metrics["metrics_hash"] == result.metrics["metrics_hash"]


def test_fresh_rerun_gives_identical_metrics(tiny_run, tmp_path):
    model, out, _ = tiny_run
    run_pipeline(tiny_config(), tmp_path / "again", progress=False, model=model)
    assert (tmp_path / "again" / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()


def test_folder_with_run_is_refused(tiny_run):
    model, out, _ = tiny_run
    with pytest.raises(RunFolderError, match="--resume"):
        run_pipeline(tiny_config(), out, progress=False, model=model)


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(RunFolderError, match="--force"):
        run_pipeline(tiny_config(), tmp_path, progress=False, model=build_tiny_llama())


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    model = build_tiny_llama(seed=4)
    out = tmp_path / "run"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("harmcircuit.pipeline.run.evaluate_transfer", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(tiny_config(), out, progress=False, model=model)
    assert not (out / "metrics.json").exists()
    for stage in (out / "stages").glob("*.json"):
        json.loads(stage.read_text())
    assert not [p for p in (out / "stages").iterdir() if p.name.startswith(".")]

    def fail(*args, **kwargs):
        raise AssertionError("scoring reran after the interruption")

    monkeypatch.setattr(weights_module, "snip", fail)
    result = run_pipeline(tiny_config(), out, resume=True, progress=False, model=model)
    assert (out / "metrics.json").is_file()
    assert result.metrics["conditions"]


def test_force_starts_over(tmp_path):
    model = build_tiny_llama(seed=5)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"other": 1}}))
    (out / "stale.txt").write_text("old")
    run_pipeline(tiny_config(), out, force=True, progress=False, model=model)
    assert not (out / "stale.txt").exists()
    assert (out / "metrics.json").is_file()


def test_too_small_category_is_named(tmp_path):
    config = tiny_config(harmful_per_category=1)
    with pytest.raises(ValueError, match="at least 2"):
        run_pipeline(config, tmp_path / "run", progress=False, model=build_tiny_llama())


def test_cli_rejects_bad_sparsity(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--sparsities", "0,1e-6"])
    assert stop.value.code == 2
    assert "sparsity 0.0 is outside (0, 1]" in capsys.readouterr().err


def test_cli_rejects_headline_outside_sweep(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--sparsities", "1e-6", "--headline", "5e-6"])
    assert stop.value.code == 2
    assert "headline sparsity" in capsys.readouterr().err


def test_cli_unknown_dataset_is_one_line_error(tmp_path, capsys):
    code = cli.main(["run", "--harmful", "nosuchset", "--out", str(tmp_path / "run"), "--quick"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "nosuchset" in error[-1]
    assert error[-1].startswith("harmcircuit: error:")


@pytest.mark.real_model
@pytest.mark.slow
def test_quick_run_on_embedded_model(tmp_path, capsys):
    out = tmp_path / "quick"
    code = cli.main(["run", "--quick", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Compact:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["n_layers"] == 30
    assert metrics["model"]["n_scored_weights"] == 30 * 3538944
    headline = metrics["conditions"]["harm@5e-06"]
    assert headline["n_weights"] == round(5e-6 * metrics["model"]["n_scored_weights"])
    report = (out / "report.html").read_text()
    assert "plotly" in report
    assert 'src="http' not in report
    for claim in metrics["claims"]:
        assert claim["held"] in (True, False, None)


@pytest.mark.parametrize("name", ["batch_size", "generation_batch_size"])
def test_config_rejects_empty_batches(name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1, got 0"):
        tiny_config(**{name: 0}).validate()


def test_force_keeps_foreign_folder(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a run")
    with pytest.raises(RunFolderError, match="only clears folders of earlier runs"):
        run_pipeline(tiny_config(), tmp_path, force=True, progress=False, model=build_tiny_llama())
    assert notes.read_text() == "not a run"


def test_file_as_output_is_rejected(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        run_pipeline(tiny_config(), target, progress=False, model=build_tiny_llama())


def test_too_few_shots_fail_early(tmp_path):
    benign = tmp_path / "two.jsonl"
    benign.write_text('{"prompt": "Name a fruit."}\n{"prompt": "Name a colour."}\n')
    out = tmp_path / "run"
    config = tiny_config(benign=(str(benign),))
    with pytest.raises(ValueError, match="benign train split has 1 example"):
        run_pipeline(config, out, progress=False, model=build_tiny_llama())
    assert not out.exists()


def test_summary_lines_show_reasons():
    estimate = {"value": 0.75, "low": 0.5, "high": 0.9}
    claims = [
        {"claim": "A", "harm_set": "x", "control": "y", "held": None, "note": "at chance"},
        {"claim": "B", "harm_set": "", "control": "", "held": None, "note": "needs data"},
        {"claim": "C", "harm_set": "x", "control": "y", "held": False, "note": "n"},
    ]
    lines = summary_lines(claims)
    assert lines[0] == "A: not tested (harm set: x; compared with y) (at chance)"
    assert lines[1] == "B: not tested (needs data)"
    assert lines[2] == "C: NOT reproduced (harm set: x; compared with y)"
    assert _fmt_rate(estimate) == "0.750 [0.500, 0.900]"


@pytest.mark.parametrize("started", [False, True])
def test_cli_interrupt_message(tmp_path, monkeypatch, capsys, started):
    out = tmp_path / "run"

    def interrupt(config, folder, **options):
        if started:
            out.mkdir()
            (out / "run.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr("harmcircuit.pipeline.run.run_pipeline", interrupt)
    code = cli.main(["run", "--quick", "--out", str(out), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 130
    if started:
        assert "rerun with --resume" in error
    else:
        assert "nothing was written to" in error
