"""A stand-in for train.py in runner tests: same flags, Dassl-style checkpoints, resume, results.json.

Each "epoch" sleeps $FAKE_TRAIN_SLEEP seconds and saves `model/model.pth.tar-<epoch>` plus the
`model/checkpoint` pointer; a rerun into the same output dir resumes after the last saved epoch.
The accuracy is a pure function of (dataset, seed, subsample, shots, trained epochs), so two sweeps
agree exactly. Every completed run appends a line to `completions.txt` and every trained epoch to
`epochs.txt`, so tests can count what really ran. $FAKE_TRAIN_FAIL: output dirs containing this
string exit 3; with $FAKE_TRAIN_FAIL_ONCE=1 only their first attempt fails.
"""
import argparse
import hashlib
import json
import os
import sys
import time


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


def main():
    p = argparse.ArgumentParser()
    for flag in ("--root", "--output-dir", "--config-file", "--dataset-config-file", "--trainer", "--model-dir"):
        p.add_argument(flag, default="")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--load-epoch", type=int)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args()
    opts = dict(zip(args.opts[0::2], args.opts[1::2]))
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    dataset = os.path.basename(args.dataset_config_file).replace(".yaml", "")
    subsample = opts.get("DATASET.SUBSAMPLE_CLASSES", "all")
    shots = int(opts.get("DATASET.NUM_SHOTS", 16))
    epochs = int(opts.get("OPTIM.MAX_EPOCH", 3))
    sleep = float(os.environ.get("FAKE_TRAIN_SLEEP", "0.2"))
    with open(os.path.join(out, "log.txt"), "a") as log:
        log.write(f"fake train {' '.join(sys.argv[1:])}\n")

    fail = os.environ.get("FAKE_TRAIN_FAIL")
    if fail and fail in out:
        marker = os.path.join(out, "failed_once")
        if not (os.environ.get("FAKE_TRAIN_FAIL_ONCE") and os.path.exists(marker)):
            open(marker, "w").close()
            print("Traceback (most recent call last):\nRuntimeError: fake failure for " + out, file=sys.stderr)
            sys.exit(3)

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
    record = {"trainer": args.trainer, "dataset": dataset, "subsample": subsample, "shots": shots, "seed": args.seed,
              "accuracy": accuracy, "train_time_s": train_time or None, "test_time_s": 0.01,
              "peak_memory_mb": 100.0 + shots, "peak_memory_kind": "cpu_peak_rss", "trainable_params": 1000 + shots}
    atomic_write(os.path.join(out, "results.json"), json.dumps(record))
    with open(os.path.join(out, "completions.txt"), "a") as f:
        f.write(f"{time.time()}\n")


if __name__ == "__main__":
    main()
