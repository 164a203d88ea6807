"""A stand-in for train.py in runner tests: same flags, Dassl-style checkpoints, resume, results.json.

Each "epoch" sleeps $FAKE_TRAIN_SLEEP seconds and saves `model/model.pth.tar-<epoch>` plus the
`model/checkpoint` pointer; a rerun into the same output dir resumes after the last saved epoch.
The accuracy is a pure function of (dataset, seed, subsample, shots, trained epochs), so two sweeps
agree exactly; DyT runs also record `best_epoch_accuracy` (the best of that function over
their epochs), `best_epoch` and `accuracy_by_epoch`. Every completed run appends a line to `completions.txt` and every trained epoch to
`epochs.txt`, so tests can count what really ran, and its command line to `argv.jsonl`. $FAKE_TRAIN_FAIL: output dirs containing this
string exit $FAKE_TRAIN_FAIL_CODE (default 3); with $FAKE_TRAIN_FAIL_ONCE=1 only their first attempt fails.
SIGTERM is noted in `signals.txt` and ends the run with 143, like train.py (ignored with
$FAKE_TRAIN_IGNORE_TERM=1, to test the runner's SIGKILL after its grace period).

`--check-commands FILE` follows train.py's protocol (one JSON answer per line, exit 2 if any run
fails): a run fails when a config file is missing, the trainer is unknown, or its arguments contain
$FAKE_CHECK_FAIL. Each such call appends a line to $FAKE_CHECK_LOG, so tests can count them.
"""
import argparse
import hashlib
import json
import os
import signal
import sys
import time

KNOWN_TRAINERS = {"CoOp", "ZeroshotCLIP", "ZeroshotCLIP2", "SkipTuning", "FinetuneCLIP", "DyT"}
TESTS_EVERY_EPOCH = {"DyT"}  # their results.json carries the best test accuracy over epochs, as DyT's


def atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def score(*parts):
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return 40.0 + int(digest[:8], 16) % 5000 / 100.0


def build_parser():
    p = argparse.ArgumentParser()
    for flag in ("--root", "--output-dir", "--config-file", "--dataset-config-file", "--trainer", "--model-dir",
                 "--check-commands"):
        p.add_argument(flag, default="")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--load-epoch", type=int)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    return p


def check_error(argv):
    """What train.py's check would say about one run ("" if it would start)."""
    args = build_parser().parse_args(argv)
    for path in (args.config_file, args.dataset_config_file):
        if not os.path.isfile(path):
            return f"Config file not found: {path}"
    if args.trainer not in KNOWN_TRAINERS:
        return f"Unknown trainer '{args.trainer}'"
    marker = os.environ.get("FAKE_CHECK_FAIL")
    if marker and any(marker in a for a in argv):
        return f"fake check failure: {marker}"
    return ""


def check_commands(path):
    if os.environ.get("FAKE_CHECK_LOG"):
        with open(os.environ["FAKE_CHECK_LOG"], "a") as f:
            f.write(f"{path}\n")
    errors = []
    with open(path) as f:
        for line in f:
            if line.strip():
                errors.append(check_error(json.loads(line)))
                print(json.dumps({"ok": not errors[-1], "error": errors[-1]}))
    return 2 if any(errors) else 0


def on_sigterm(out):
    def handler(signum, _frame):
        with open(os.path.join(out, "signals.txt"), "a") as f:
            f.write("SIGTERM\n")
        if not os.environ.get("FAKE_TRAIN_IGNORE_TERM"):
            sys.exit(128 + signum)
    return handler


def main():
    args = build_parser().parse_args()
    if args.check_commands:
        sys.exit(check_commands(args.check_commands))
    opts = dict(zip(args.opts[0::2], args.opts[1::2]))
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    signal.signal(signal.SIGTERM, on_sigterm(out))
    dataset = os.path.basename(args.dataset_config_file).replace(".yaml", "")
    subsample = opts.get("DATASET.SUBSAMPLE_CLASSES", "all")
    shots = int(opts.get("DATASET.NUM_SHOTS", 16))
    epochs = int(opts.get("OPTIM.MAX_EPOCH", 3))
    sleep = float(os.environ.get("FAKE_TRAIN_SLEEP", "0.2"))
    with open(os.path.join(out, "log.txt"), "a") as log:
        log.write(f"fake train {' '.join(sys.argv[1:])}\n")
    with open(os.path.join(out, "argv.jsonl"), "a") as f:  # exactly what this process was given
        f.write(json.dumps([sys.executable, *sys.argv]) + "\n")

    fail = os.environ.get("FAKE_TRAIN_FAIL")
    if fail and fail in out:
        marker = os.path.join(out, "failed_once")
        if not (os.environ.get("FAKE_TRAIN_FAIL_ONCE") and os.path.exists(marker)):
            open(marker, "w").close()
            print("Traceback (most recent call last):\nRuntimeError: fake failure for " + out, file=sys.stderr)
            sys.exit(int(os.environ.get("FAKE_TRAIN_FAIL_CODE", "3")))

    model_dir = os.path.join(out, "model")
    train_time = 0.0
    if args.eval_only:
        if args.model_dir:
            ckpt = os.path.join(args.model_dir, "model", f"model.pth.tar-{args.load_epoch}")
            if not os.path.isfile(ckpt):
                print(f"FileNotFoundError: {ckpt}", file=sys.stderr)
                sys.exit(2)
            with open(ckpt) as f:
                state = json.load(f)
        else:
            state = {"dataset": "zero-shot", "seed": 0, "epoch": 0}
    else:
        start = 0
        pointer = os.path.join(model_dir, "checkpoint")
        if os.path.isfile(pointer):
            with open(pointer) as f:
                start = int(f.read().strip().rsplit("-", 1)[1])
        os.makedirs(model_dir, exist_ok=True)
        state = {"dataset": dataset, "seed": args.seed, "shots": shots, "epoch": start}
        for epoch in range(start, epochs):
            time.sleep(sleep)
            train_time += sleep
            state["epoch"] = epoch + 1
            atomic_write(os.path.join(model_dir, f"model.pth.tar-{epoch + 1}"), json.dumps(state))
            atomic_write(pointer, f"model.pth.tar-{epoch + 1}\n")
            with open(os.path.join(out, "epochs.txt"), "a") as f:
                f.write(f"{epoch + 1}\n")
    accuracy = round(score(state["dataset"], state["seed"], state["epoch"], dataset, subsample, shots), 2)
    trained = not args.eval_only
    record = {"trainer": args.trainer, "dataset": dataset, "subsample": subsample, "shots": shots, "seed": args.seed,
              "backbone": opts.get("MODEL.BACKBONE.NAME", "ViT-B/16"), "accuracy": accuracy,
              "train_time_s": train_time if trained else None, "test_time_s": 0.01,
              "peak_memory_mb": 100.0 + shots, "peak_memory_kind": "cpu_peak_rss", "resident_memory_mb": 90.0,
              "train_step_memory_mb": 10.0 + shots if trained else None, "trainable_params": 1000 + shots}
    if args.trainer in TESTS_EVERY_EPOCH and trained:
        by_epoch = {e: round(score(state["dataset"], state["seed"], e, dataset, subsample, shots), 2)
                    for e in range(1, state["epoch"] + 1)}
        best = max(by_epoch.items(), key=lambda kv: (kv[1], kv[0]))
        record.update(best_epoch_accuracy=best[1], best_epoch=best[0],
                      accuracy_by_epoch={str(e): a for e, a in by_epoch.items()})
    atomic_write(os.path.join(out, "results.json"), json.dumps(record))
    with open(os.path.join(out, "completions.txt"), "a") as f:
        f.write(f"{time.time()}\n")


if __name__ == "__main__":
    main()
