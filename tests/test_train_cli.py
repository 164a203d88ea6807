"""train.py: config assembly order, CoOp's flags, and clear errors for bad input."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from tests.conftest import REPO_ROOT, config_path, run_train


def parse(*argv: str):
    return train.build_parser().parse_args(list(argv))


def test_merge_order_method_file_over_dataset_file_flags_and_opts_over_both(tmp_path):
    cfg = train.setup_cfg(parse(
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50_ctxv1.yaml"),
        "--trainer", "CoOp", "--root", str(tmp_path), "--seed", "0",
        "OPTIM.MAX_EPOCH", "7", "TRAINER.COOP.N_CTX", "8",
    ))
    assert cfg.DATASET.NAME == "Caltech101"
    assert cfg.TRAINER.NAME == "CoOp" and cfg.DATASET.ROOT == str(tmp_path)
    assert cfg.OPTIM.MAX_EPOCH == 7 and cfg.TRAINER.COOP.N_CTX == 8
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a"
    assert cfg.OPTIM.WARMUP_CONS_LR == pytest.approx(1e-5)  # "1e-5" in YAML is a string until literal_eval
    assert cfg.INPUT.SIZE == (224, 224)
    assert cfg.SEED == 0  # --seed 0 is honoured (the original silently dropped it)
    with pytest.raises(Exception):
        cfg.OPTIM.LR = 1.0  # frozen


def test_omitted_seed_keeps_the_config_value():
    cfg = train.setup_cfg(parse("SEED", "5"))
    assert cfg.SEED == 5
    assert train.setup_cfg(parse()).SEED == -1


def test_unknown_config_key_names_the_key_and_the_closest_valid_ones():
    with pytest.raises(KeyError, match=r"OPTIM\.LRR.*OPTIM\.LR"):
        train.setup_cfg(parse("OPTIM.LRR", "0.1"))


def test_unknown_trainer_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAINER:\n  COOP:\n    N_CTXX: 4\n")
    with pytest.raises(KeyError, match=r"TRAINER\.COOP\.N_CTXX.*bad\.yaml.*TRAINER\.COOP\.N_CTX"):
        train.setup_cfg(parse("--trainer", "CoOp", "--config-file", str(bad)))


def test_only_the_chosen_trainer_extends_the_config_and_others_keys_are_skipped(tmp_path):
    shared = tmp_path / "shared.yaml"  # CoOp's configs also serve zero-shot CLIP, as in the original
    shared.write_text("OPTIM:\n  LR: 0.5\nTRAINER:\n  COOP:\n    N_CTX: 4\n  ZSCLIP:\n    PREC: fp32\n")
    resolved = train.resolve_cfg(parse("--trainer", "ZeroshotCLIP", "--config-file", str(shared)))
    assert set(resolved.cfg.TRAINER) == {"NAME", "ZSCLIP"} and resolved.cfg.TRAINER.ZSCLIP.PREC == "fp32"
    assert resolved.cfg.OPTIM.LR == 0.5
    assert any("TRAINER.COOP" in note and "shared.yaml" in note for note in resolved.notes)
    coop = train.setup_cfg(parse("--trainer", "CoOp", "--config-file", str(shared), "TRAINER.ZSCLIP.PREC", "fp16"))
    assert set(coop.TRAINER) == {"NAME", "COOP"} and coop.TRAINER.COOP.N_CTX == 4


def test_unknown_trainer_suggests_the_closest_name(caltech_root, tiny_clip_path, tmp_path):
    with pytest.raises(KeyError, match="CoOp"):
        run_train([
            "--root", str(caltech_root), "--trainer", "CoOpp",
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--output-dir", str(tmp_path), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        ])


def test_missing_dataset_folder_says_where_and_how_to_fix(tiny_clip_path, tmp_path):
    empty_root = tmp_path / "no_data_here"
    empty_root.mkdir()
    with pytest.raises(Exception, match=r"caltech-101.*DATASETS\.md"):
        run_train([
            "--root", str(empty_root), "--trainer", "ZeroshotCLIP", "--eval-only",
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
            "--output-dir", str(tmp_path / "out"), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        ])


def test_an_input_size_the_backbone_cannot_take_is_replaced_with_a_warning(caltech_root, tiny_clip_path, tmp_path):
    # vit_b16.yaml sets INPUT.SIZE (224, 224); the tiny CLIP's positional embedding fixes 32 px.
    record = run_train([
        "--root", str(caltech_root), "--trainer", "ZeroshotCLIP", "--eval-only",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
        "--output-dir", str(tmp_path), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        "DATALOADER.NUM_WORKERS", "0", "TRAINER.ZSCLIP.PREC", "fp32",
    ])
    assert record["num_test"] == 12
    log = (tmp_path / "log.txt").read_text()
    assert "INPUT.SIZE (224, 224) is set by the configuration" in log and "using (32, 32)" in log
    assert "SIZE:\n  - 32\n  - 32" in (tmp_path / "config.yaml").read_text()


def test_config_yaml_holds_the_resolved_config(caltech_root, tiny_clip_path, tmp_path):
    import yaml

    run_train([
        "--root", str(caltech_root), "--trainer", "ZeroshotCLIP", "--eval-only",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
        "--output-dir", str(tmp_path), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "TRAINER.ZSCLIP.PREC", "fp32",
    ])
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["TRAINER"]["NAME"] == "ZeroshotCLIP"
    assert written["MODEL"]["BACKBONE"]["NAME"] == str(tiny_clip_path)
    assert written["DATASET"]["NAME"] == "Caltech101"


# ----------------------------------------------------------------------------- the command line
def _tiny_zeroshot(root, clip_path, out, *opts: str, flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--trainer", "ZeroshotCLIP", "--eval-only", *flags,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
        "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(clip_path),
        "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "TRAINER.ZSCLIP.PREC", "fp32", *opts,
    ]


def _tiny_coop(root, clip_path, out, *opts: str, flags: tuple = ()) -> list[str]:
    return [
        "--root", str(root), "--seed", "1", "--trainer", "CoOp", *flags,
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50.yaml"),
        "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(clip_path), "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4",
        "TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "1", *opts,
    ]


def _mistakes(root, clip_path, tmp_path) -> dict[str, tuple[list[str], str, dict]]:
    """name -> (argv, a regex the message must match, extra environment)."""
    out = tmp_path / "out"
    trained = tmp_path / "trained"
    corrupt = tmp_path / "corrupt"
    return {
        "unknown trainer": (["CoOP" if a == "CoOp" else a for a in _tiny_coop(root, clip_path, out)],
                            r"CoOP.*Did you mean: CoOp", {}),
        "unknown config key": (_tiny_coop(root, clip_path, out, "OPTIM.LRR", "0.1"), r"OPTIM\.LRR.*OPTIM\.LR", {}),
        "value of the wrong type": (_tiny_coop(root, clip_path, out, "OPTIM.MAX_EPOCH", "ten"), r"OPTIM\.MAX_EPOCH", {}),
        "invalid value": (_tiny_coop(root, clip_path, out, "TRAINER.COOP.PREC", "fp8"), r"TRAINER\.COOP\.PREC.*fp8", {}),
        "missing config file": (
            [str(tmp_path / "nope.yaml") if a.endswith("vit_b16_ep50.yaml") else a
             for a in _tiny_coop(root, clip_path, out)],
            r"Config file not found.*nope\.yaml", {},
        ),
        "missing data root": (
            _tiny_coop(tmp_path / "no_such_root", clip_path, out), r"Data root not found.*no_such_root", {},
        ),
        "missing dataset folder": (
            _tiny_zeroshot(tmp_path, clip_path, out), r"caltech-101.*DATASETS\.md#caltech101", {},
        ),
        "unknown backbone": (
            _tiny_coop(root, clip_path, out, "MODEL.BACKBONE.NAME", "ViT-B/61"), r"ViT-B/61.*not found.*ViT-B/16", {},
        ),
        "missing checkpoint": (
            _tiny_coop(root, clip_path, out, flags=("--eval-only", "--model-dir", str(tmp_path / "empty"),
                                                    "--load-epoch", "1")),
            r"Checkpoint not found.*model\.pth\.tar-1.*--model-dir", {},
        ),
        "checkpoint of another shape": (
            _tiny_coop(root, clip_path, out, "TRAINER.COOP.N_CTX", "8",
                       flags=("--eval-only", "--model-dir", str(trained), "--load-epoch", "1")),
            r"does not fit.*ctx.*\(4, 64\) vs model \(8, 64\)", {},
        ),
        "corrupt checkpoint": (
            _tiny_coop(root, clip_path, out, flags=("--eval-only", "--model-dir", str(corrupt), "--load-epoch", "1")),
            r"Cannot read checkpoint .*model\.pth\.tar-1.*corrupt", {},
        ),
        "zero-shot without --eval-only": (
            [a for a in _tiny_zeroshot(root, clip_path, out) if a != "--eval-only"], r"nothing to train.*--eval-only", {},
        ),
        "GPU that does not exist": (_tiny_coop(root, clip_path, out), r"CUDA_VISIBLE_DEVICES=3.*USE_CUDA False",
                                    {"CUDA_VISIBLE_DEVICES": "3"}),
    }


def test_every_user_mistake_ends_in_one_message_and_exit_status_2(caltech_root, tiny_clip_path, tmp_path,
                                                                  capsys, monkeypatch):
    """train.py's command line (`cli`, what `python train.py` runs) on each kind of mistake."""
    import train

    run_train(_tiny_coop(caltech_root, tiny_clip_path, tmp_path / "trained"))  # N_CTX 4, for the shape mistake
    trained_file = tmp_path / "trained" / "prompt_learner" / "model.pth.tar-1"
    (tmp_path / "corrupt" / "prompt_learner").mkdir(parents=True)
    (tmp_path / "corrupt" / "prompt_learner" / "model.pth.tar-1").write_bytes(trained_file.read_bytes()[:300])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    for name, (argv, pattern, env) in _mistakes(caltech_root, tiny_clip_path, tmp_path).items():
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            status = train.cli(argv)
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert status == 2, name
        assert len(errors) == 1 and "Traceback" not in captured.err + captured.out, (name, captured.err)
        assert re.search(pattern, captured.err, re.S), (name, captured.err)


def test_command_line_exit_status_and_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "--trainer", "CoOp", "--dataset-config-file",
         config_path("datasets", "demo_shapes.yaml"), "--config-file", config_path("trainers", "CoOp", "demo.yaml"),
         "--output-dir", str(tmp_path), "TRAINER.COOP.N_CTXX", "4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Unknown config key 'TRAINER.COOP.N_CTXX'") and "Traceback" not in proc.stderr
    assert not (tmp_path / "log.txt").exists()  # caught before anything ran


def test_unexpected_failures_keep_their_traceback(caltech_root, tiny_clip_path, tmp_path, monkeypatch):
    import train
    from engine.trainer import SimpleTrainer

    def broken(self, split=None):
        raise ZeroDivisionError("a bug, not a user mistake")

    monkeypatch.setattr(SimpleTrainer, "test", broken)
    with pytest.raises(ZeroDivisionError):
        train.cli(_tiny_zeroshot(caltech_root, tiny_clip_path, tmp_path))


def test_check_reports_without_running_and_check_commands_checks_many(caltech_root, tiny_clip_path, tmp_path, capsys):
    import train

    assert train.cli(_tiny_coop(caltech_root, tiny_clip_path, tmp_path / "a", flags=("--check",))) == 0
    assert "OK: CoOp on Caltech101 would start" in capsys.readouterr().out
    assert not (tmp_path / "a").exists()
    commands = tmp_path / "commands.jsonl"
    good = _tiny_coop(caltech_root, tiny_clip_path, tmp_path / "b")
    bad = _tiny_coop(caltech_root, tiny_clip_path, tmp_path / "c", "TRAINER.COOP.NCTX", "2")
    commands.write_text("\n".join(json.dumps(a) for a in (good, bad, ["--no-such-flag"])) + "\n")
    assert train.cli(["--check-commands", str(commands)]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["ok"] for line in lines] == [True, False, False]
    assert "TRAINER.COOP.NCTX" in lines[1]["error"] and "--no-such-flag" in lines[2]["error"]


def test_console_shows_a_summary_and_log_txt_the_full_config(caltech_root, tiny_clip_path, tmp_path, capsys):
    import train

    assert train.cli(_tiny_zeroshot(caltech_root, tiny_clip_path, tmp_path, "TEST.SPLIT", "val")) == 0
    console = capsys.readouterr().out
    first = console.splitlines()[0]
    assert first.startswith("ZeroshotCLIP on Caltech101 (all classes") and first.endswith(f"-> {tmp_path}")
    assert "Settings that differ from the defaults:" in console and "TEST.SPLIT val" in console
    assert "** Config **" not in console and "PyTorch:" not in console
    log = (tmp_path / "log.txt").read_text()
    assert "** Config **" in log and "PIXEL_MEAN" in log and "PyTorch:" in log


# ----------------------------------------------------------------------------- interruption
def _demo_coop_command(root, out, epochs: int = 5) -> list[str]:
    return [
        sys.executable, "train.py", "--root", str(root), "--seed", "1", "--trainer", "CoOp",
        "--dataset-config-file", config_path("datasets", "demo_shapes.yaml"),
        "--config-file", config_path("trainers", "CoOp", "demo.yaml"), "--output-dir", str(out),
        "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", str(epochs),
        "TEST.SAVE_PREDICTIONS", "True",
    ]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_after_next_epoch(command: list[str], out, signum: int) -> subprocess.CompletedProcess:
    """Start `command`, wait until it writes a (new) resume point, then send `signum`."""
    point = out / "resume.pth.tar"
    before = point.stat().st_mtime_ns if point.exists() else None
    # Ctrl-C as in a terminal: a test runner started in the background (`pytest &` in a script) has
    # SIGINT ignored, which a child inherits, and then Python installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if point.exists() and point.stat().st_mtime_ns != before:
            break
        time.sleep(0.01)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _finished_epochs(out) -> int:
    return int(torch.load(out / "resume.pth.tar", weights_only=True)["epoch"])


@pytest.mark.slow
def test_interrupted_runs_resume_from_the_last_finished_epoch_and_end_bit_identical(demo_root, tmp_path):
    """SIGTERM, then Ctrl-C after resuming, then a full rerun: the same weights and logits as one
    uninterrupted run (CPU, fp32), with CHECKPOINT_FREQ 0 (only the final epoch is a Dassl checkpoint)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_demo_coop_command(demo_root, full), cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    assert not (full / "resume.pth.tar").exists()  # removed once training finished

    first = _interrupt_after_next_epoch(_demo_coop_command(demo_root, cut), cut, signal.SIGTERM)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    assert "Traceback" not in first.stderr + first.stdout
    assert "Stopped by SIGTERM. To continue, run the same command again" in first.stderr
    done_first = _finished_epochs(cut)
    assert 1 <= done_first < 4
    assert f"The resume point after {done_first} finished epoch(s)" in first.stdout
    assert not (cut / "prompt_learner" / "checkpoint").exists()  # no Dassl checkpoint yet: only the resume point

    second = _interrupt_after_next_epoch(_demo_coop_command(demo_root, cut), cut, signal.SIGINT)
    assert second.returncode == 128 + signal.SIGINT and "Stopped by SIGINT" in second.stderr
    assert _finished_epochs(cut) > done_first

    subprocess.run(_demo_coop_command(demo_root, cut), cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    a = torch.load(full / "prompt_learner" / "model.pth.tar-5", weights_only=True)
    b = torch.load(cut / "prompt_learner" / "model.pth.tar-5", weights_only=True)
    assert torch.equal(a["state_dict"]["ctx"], b["state_dict"]["ctx"])
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])
    np.testing.assert_array_equal(np.load(full / "predictions.npz")["logits"], np.load(cut / "predictions.npz")["logits"])
    assert json.loads((full / "results.json").read_text())["accuracy"] == json.loads(
        (cut / "results.json").read_text())["accuracy"]
    # One log.txt telling the whole story, each continuation after a marker.
    assert sorted(p.name for p in cut.glob("log.txt*")) == ["log.txt"]
    log = (cut / "log.txt").read_text()
    assert log.count("a new invocation continues this log") == 2
    assert log.count("Resumed from") == 2 and f"{done_first} epoch(s) finished, continuing with epoch {done_first + 1}" in log
    assert not (cut / "resume.pth.tar").exists()
