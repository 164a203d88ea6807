"""Measure every number README.md states about this code, and rewrite them there.

    python -m benchmarks.readme_numbers                     # measure every block, print it (markdown)
    python -m benchmarks.readme_numbers --write             # ... and rewrite the blocks in README.md
    python -m benchmarks.readme_numbers --only demo_zero_shot demo_coop --write
    python -m benchmarks.readme_numbers --list              # the block names

Each generated part of README.md sits between two marker comments, each on a line of its own::

    <!-- readme_numbers:NAME -->
    ... (rewritten) ...
    <!-- /readme_numbers:NAME -->

Only the text between a block's markers changes; everything outside stays as it is. Each block
ends with a line naming the command that produced it and the machine (CPU, cores, Python and torch
versions, date, and how many cores other processes kept busy meanwhile: their work lengthens the
times, not the accuracies). The markers are checked before anything is measured.

Runs happen in-process through `train.main` (no interpreter start-up per run), with their outputs
and the demo data in a temporary folder: nothing is written to ~/.cache, outputs/ or results/.
The quick-start block runs `parallel_runner.py` as a user would (a subprocess, its own data).
The demo blocks take a few minutes on 2 CPU cores, the cost benchmark several more.
The demo CLIP's pretraining time is not measured here: `python -m demo.pretrain_clip` prints it.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from engine.errors import ConfigValueError, UserError, run_cli

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
COMMAND = "python -m benchmarks.readme_numbers"
DEMO_CONFIG = "configs/trainers/CoOp/demo.yaml"
# The cost benchmark's settings: ViT-B/16 geometry on the CPU (the README's table is a CPU table).
# Exact and fast mode (TRAIN.FAST_MODE) for every trainer.
BENCHMARK_ARGV = ("--trainer", "all", "--batch", "4", "--classes", "100", "--steps", "3", "--device", "cpu",
                  "--mode", "both")
# The per-image loop's step takes about a minute here (400 prompts x 77 tokens, fp32 on 2 cores): 2 timed steps.
COCOOP_BATCHING_ARGV = ("--batch", "4", "--classes", "100", "--steps", "2", "--device", "cpu")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHOTS, SEED = 16, 1  # the demo's CoOp runs: 16 shots, seed 1


# ------------------------------------------------------------------------------------ markers
class MarkerError(UserError):
    """README.md's marker comments do not delimit the blocks this command writes."""


# A marker is a line of its own (so that prose may quote one in backticks).
MARKER_RE = re.compile(r"^<!-- (/?)readme_numbers:([A-Za-z0-9_]+) -->[ \t]*$", re.M)


@dataclass(frozen=True)
class Span:
    """Where a block's content lies in the text: between the end of its opening marker and the
    start of its closing one."""

    start: int
    end: int


def find_blocks(text: str, source: str = "README.md") -> dict[str, Span]:
    """Every marked block of `text`; raises MarkerError on an unbalanced, nested or repeated marker."""
    blocks: dict[str, Span] = {}
    open_name, open_end = None, 0
    for match in MARKER_RE.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if not closing:
            if open_name is not None:
                raise MarkerError(f"{source}:{line}: block '{name}' opens inside block '{open_name}'; "
                                  f"close '{open_name}' first with <!-- /readme_numbers:{open_name} -->.")
            if name in blocks:
                raise MarkerError(f"{source}:{line}: block '{name}' appears twice; keep one pair of its markers.")
            open_name, open_end = name, match.end()
        elif open_name != name:
            what = f"inside block '{open_name}'" if open_name else "without an opening marker"
            raise MarkerError(f"{source}:{line}: closing marker of '{name}' {what}; "
                              f"add <!-- readme_numbers:{name} --> before it or remove it.")
        else:
            blocks[name] = Span(open_end, match.start())
            open_name = None
    if open_name is not None:
        raise MarkerError(f"{source}: block '{open_name}' is never closed; add <!-- /readme_numbers:{open_name} -->.")
    return blocks


def require_blocks(text: str, names: list[str], source: str = "README.md") -> dict[str, Span]:
    """`find_blocks`, and every name in `names` must be among them."""
    blocks = find_blocks(text, source)
    missing = [n for n in names if n not in blocks]
    if missing:
        raise MarkerError(
            f"{source} has no block {', '.join(repr(n) for n in missing)}: put the generated text between "
            + " and ".join(f"<!-- readme_numbers:{n} --> ... <!-- /readme_numbers:{n} -->" for n in missing) + "."
        )
    return blocks


def replace_blocks(text: str, contents: dict[str, str], source: str = "README.md") -> str:
    """`text` with the content between each named block's markers replaced (markers kept)."""
    blocks = require_blocks(text, list(contents), source)
    out, position = [], 0
    for name, span in sorted(blocks.items(), key=lambda item: item[1].start):
        if name in contents:
            out += [text[position:span.start], "\n" + contents[name].strip("\n") + "\n"]
            position = span.end
    return "".join(out) + text[position:]


def wrap_block(name: str, content: str) -> str:
    """`content` between the markers of block `name` (what the command prints)."""
    return f"<!-- readme_numbers:{name} -->\n{content.strip(chr(10))}\n<!-- /readme_numbers:{name} -->"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` through a temporary file: an interruption leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ formatting
def pct(value: float) -> str:
    return f"{value:.1f}%"


def paragraph(text: str) -> str:
    """Wrap prose at README's width (code spans may wrap: markdown reads a newline as a space)."""
    return textwrap.fill(" ".join(text.split()), width=100, break_long_words=False, break_on_hyphens=False)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_busy_s() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (/proc/stat), or None."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its finished subprocesses (runs, benchmark workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def others_cores(machine_busy: float, own: float, wall: float) -> float:
    """How many cores other processes kept busy on average: the machine's busy CPU time minus ours,
    over the wall time (ours includes our subprocesses, so only other work remains)."""
    return max(0.0, (machine_busy - own) / wall) if wall > 0 else 0.0


class OtherWorkMeter:
    """Measures the CPU other processes used while a block was measured (their work slows ours)."""

    def __enter__(self) -> "OtherWorkMeter":
        self.cores: float | None = None
        self._start = (machine_busy_s(), own_cpu_s(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, own0, t0 = self._start
        busy1 = machine_busy_s()
        if busy0 is not None and busy1 is not None:
            self.cores = others_cores(busy1 - busy0, own_cpu_s() - own0, time.perf_counter() - t0)


@dataclass(frozen=True)
class Provenance:
    """Which command produced a block, and on what machine."""

    command: str
    cpu: str
    cores: int
    python: str
    torch: str
    day: str
    others: float | None = None  # cores other processes kept busy on average while the block ran

    @classmethod
    def now(cls, block: str) -> "Provenance":
        return cls(f"{COMMAND} --only {block} --write", cpu_model(), usable_cores(), platform.python_version(),
                   torch.__version__, date.today().isoformat())

    def line(self) -> str:
        others = "" if self.others is None else (
            f"; other processes kept {self.others:.1f} of the {self.cores} cores busy on average meanwhile")
        return paragraph(f"_Measured by `{self.command}` on {self.cpu} ({self.cores} cores), Python {self.python}, "
                         f"torch {self.torch}, {self.day}{others}._")

    def busy(self) -> bool:
        """Other work shared the cores (more than a quarter of one): the block's times are longer than
        on an idle machine."""
        return self.others is not None and self.others > 0.25


# ------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class RunResult:
    """What README quotes of one train.py run."""

    accuracy: float  # top-1 on the test split, %
    num_classes: int
    num_test: int
    wall_s: float  # train.main in-process (no interpreter start-up)


@contextlib.contextmanager
def train_console_on_stderr() -> Iterator[None]:
    """train.py logs to stdout; send it to stderr (stdout carries the markdown) and drop its log
    handlers afterwards (their files lie in a temporary folder)."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()


def run_train(argv: list[str]) -> RunResult:
    """One train.py run in this process; its results.json as a RunResult."""
    import train

    print(f"[readme_numbers] train.py {' '.join(argv)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with train_console_on_stderr():
        results = train.main(train.build_parser().parse_args(argv))
    wall = time.perf_counter() - start
    if not results:
        raise RuntimeError(f"train.py {' '.join(argv)} wrote no results (did it test?)")
    return RunResult(float(results["accuracy"]), int(results["num_classes"]), int(results["num_test"]), wall)


def config(*parts: str) -> str:
    return str(REPO_ROOT.joinpath("configs", *parts))


def python_startup_s() -> float:
    """Wall time of starting Python and importing train.py (what each command-line run adds)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import train"], cwd=REPO_ROOT, check=True)
    return time.perf_counter() - start


@dataclass(frozen=True)
class CoopSettings:
    """The demo CoOp recipe, read from the config the runs use."""

    shots: int
    seed: int
    epochs: int
    lr: float
    batch: int
    optimizer: str
    ctx_init: str
    precision: str


class Workspace:
    """One temporary folder for all runs; each run happens once, whichever blocks ask for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._memo: dict[tuple, Any] = {}
        self.generation_s: dict[tuple[str, str], float] = {}

    def once(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def demo_root(self, dataset_dir: str, light: str) -> str:
        """The data root holding `dataset_dir` in the warm (standard) or neutral light, written if missing."""
        from demo.make_data import DEMO_DATASETS, write_dataset

        root = self.folder / f"data_{light}"

        def write() -> str:
            spec = DEMO_DATASETS[dataset_dir]
            start = time.perf_counter()
            write_dataset(spec if light == "warm" else replace(spec, light=None), str(root))
            self.generation_s[light, dataset_dir] = time.perf_counter() - start
            return str(root)

        return self.once(("data", dataset_dir, light), write)

    def zero_shot(self, dataset_dir: str, subsample: str = "all", light: str = "warm") -> RunResult:
        def run() -> RunResult:
            return run_train([
                "--root", self.demo_root(dataset_dir, light), "--trainer", "ZeroshotCLIP", "--eval-only",
                "--dataset-config-file", config("datasets", f"{dataset_dir}.yaml"),
                "--config-file", str(REPO_ROOT / DEMO_CONFIG),
                "--output-dir", str(self.folder / "runs" / f"zsclip-{light}-{dataset_dir}-{subsample}"),
                "DATASET.SUBSAMPLE_CLASSES", subsample,
            ])

        return self.once(("zero_shot", dataset_dir, subsample, light), run)

    def _coop_argv(self, subsample: str, *flags: str) -> list[str]:
        return [
            "--root", self.demo_root("demo_shapes", "warm"), "--seed", str(SEED), "--trainer", "CoOp",
            "--dataset-config-file", config("datasets", "demo_shapes.yaml"),
            "--config-file", str(REPO_ROOT / DEMO_CONFIG),
            "--output-dir", str(self.folder / "runs" / f"coop-{subsample}"), *flags,
            "DATASET.NUM_SHOTS", str(SHOTS), "DATASET.SUBSAMPLE_CLASSES", subsample,
        ]

    def coop_settings(self) -> CoopSettings:
        import train

        cfg = train.setup_cfg(train.build_parser().parse_args(self._coop_argv("base")))
        return CoopSettings(SHOTS, SEED, int(cfg.OPTIM.MAX_EPOCH), float(cfg.OPTIM.LR),
                            int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE), str(cfg.OPTIM.NAME).upper(),
                            str(cfg.TRAINER.COOP.CTX_INIT), str(cfg.TRAINER.COOP.PREC))

    def coop_base(self) -> RunResult:
        return self.once(("coop", "base"), lambda: run_train(self._coop_argv("base")))

    def coop_new(self) -> RunResult:
        def run() -> RunResult:
            self.coop_base()
            model_dir = str(self.folder / "runs" / "coop-base")
            epoch = str(self.coop_settings().epochs)
            return run_train(self._coop_argv("new", "--eval-only", "--model-dir", model_dir, "--load-epoch", epoch))

        return self.once(("coop", "new"), run)

    def startup_s(self) -> float:
        return self.once(("startup",), python_startup_s)


# ------------------------------------------------------------------------------------ block: demo zero-shot
@dataclass(frozen=True)
class ZeroShotRow:
    """One demo dataset: zero-shot accuracy under the datasets' warm light and under neutral light."""

    dataset: str  # DATASET.NAME
    warm: RunResult
    neutral: RunResult
    base: RunResult | None = None  # the base/new halves (DemoShapes only)
    new: RunResult | None = None


@dataclass(frozen=True)
class ZeroShotRecord:
    rows: list[ZeroShotRow]
    light: tuple[float, float, float]  # the warm light's R, G, B gains


def measure_demo_zero_shot(ws: Workspace) -> ZeroShotRecord:
    from demo.make_data import DEMO_DATASETS
    from demo.world import DATASET_LIGHT

    rows = []
    for dataset_dir, spec in DEMO_DATASETS.items():
        halves = {}
        if dataset_dir == "demo_shapes":
            halves = {"base": ws.zero_shot(dataset_dir, "base"), "new": ws.zero_shot(dataset_dir, "new")}
        rows.append(ZeroShotRow(spec.name, ws.zero_shot(dataset_dir), ws.zero_shot(dataset_dir, light="neutral"),
                                **halves))
    return ZeroShotRecord(rows, DATASET_LIGHT)


def render_demo_zero_shot(record: ZeroShotRecord, prov: Provenance) -> str:
    rows = []
    for r in record.rows:
        top1 = pct(r.warm.accuracy)
        if r.base and r.new:
            top1 += (f" (base {r.base.num_classes} classes: {pct(r.base.accuracy)}, "
                     f"new {r.new.num_classes}: {pct(r.new.accuracy)})")
        rows.append([r.dataset, str(r.warm.num_classes), pct(100.0 / r.warm.num_classes), top1])
    table = markdown_table(["dataset", "classes", "chance", "zero-shot top-1"], rows)
    names = " / ".join(r.dataset for r in record.rows)
    neutral = " / ".join(pct(r.neutral.accuracy) for r in record.rows)
    gaps = " / ".join(f"{r.neutral.accuracy - r.warm.accuracy:.1f}" for r in record.rows)
    gains = ", ".join(str(g) for g in record.light)
    light = paragraph(
        f"The demo datasets are lit by a warm light (R, G, B gains {gains}, jittered per image) that the "
        "pretraining images never show: a shift between pretraining and downstream data that no class name "
        "describes, as with real datasets. Rendered under neutral light (the same images without it), the "
        f"test splits of {names} reach {neutral} with the same checkpoint; the warm light costs zero-shot CLIP "
        f"{gaps} points, and that is the gap few-shot adaptation can close. (Without it the demo CLIP's "
        "zero-shot accuracy equals a linear probe on its image features, so no prompt learner could beat it.)"
    )
    intro = paragraph(f'Zero-shot accuracy (ZeroshotCLIP, template "a photo of a {{}}.", `{DEMO_CONFIG}`, fp32, '
                      "test split):")
    return "\n\n".join([intro, table, light, prov.line()])


# ------------------------------------------------------------------------------------ block: demo CoOp
@dataclass(frozen=True)
class CoopRecord:
    settings: CoopSettings
    zero_shot_base: RunResult
    zero_shot_new: RunResult
    coop_base: RunResult  # training on the base classes, then its test on them
    coop_new: RunResult  # the saved model evaluated on the new classes
    zero_shot_all: RunResult  # a zero-shot run on the whole dataset (its time)
    generation_s: float  # writing DemoShapes (first use)
    startup_s: float  # starting Python and importing train.py


def measure_demo_coop(ws: Workspace) -> CoopRecord:
    zero_shot_all = ws.zero_shot("demo_shapes")
    return CoopRecord(ws.coop_settings(), ws.zero_shot("demo_shapes", "base"), ws.zero_shot("demo_shapes", "new"),
                      ws.coop_base(), ws.coop_new(), zero_shot_all, ws.generation_s["warm", "demo_shapes"],
                      ws.startup_s())


def change(points: float, up: str, down: str) -> str:
    return f"{up} {points:.1f} points" if points >= 0 else f"{down} {-points:.1f}"


def render_demo_coop(record: CoopRecord, prov: Provenance) -> str:
    s = record.settings
    intro = paragraph(
        f"CoOp, {s.shots} shots, seed {s.seed}, trained on the {record.coop_base.num_classes} base classes of "
        f'DemoShapes with `{DEMO_CONFIG}` (context initialised from "{s.ctx_init}", {s.optimizer} lr {s.lr:g}, '
        f"{s.epochs} epochs, batch {s.batch}, {s.precision}):"
    )
    base, new = record.coop_base, record.coop_new
    table = markdown_table(
        ["", f"base ({base.num_classes} classes, {base.num_test} test images)",
         f"new ({new.num_classes} classes, {new.num_test} test images)"],
        [["zero-shot CLIP", pct(record.zero_shot_base.accuracy), pct(record.zero_shot_new.accuracy)],
         [f"CoOp, {s.shots} shots", pct(base.accuracy), pct(new.accuracy)]],
    )
    d_base = base.accuracy - record.zero_shot_base.accuracy
    d_new = new.accuracy - record.zero_shot_new.accuracy
    pattern = ", the base/new pattern of the CoCoOp paper" if d_base > 0 > d_new else ""
    text = paragraph(
        f"CoOp {change(d_base, 'gains', 'loses')} on the classes it was trained on and "
        f"{change(d_new, 'gains', 'loses')} on unseen ones{pattern}. Wall time on the machine below, in-process (after start-up): "
        f"{seconds(base.wall_s)} for the CoOp run (training and test), {seconds(new.wall_s)} for its evaluation "
        f"on the new classes, {seconds(record.zero_shot_all.wall_s)} for a zero-shot run on all "
        f"{record.zero_shot_all.num_classes} classes; a command-line run adds {seconds(record.startup_s)} for "
        f"starting Python and importing the framework, and the first use of DemoShapes "
        f"{seconds(record.generation_s)} for generating it. The commands below reproduce these runs."
    )
    return "\n\n".join([intro, table, text, prov.line()])


# ------------------------------------------------------------------------------------ block: digits
@dataclass(frozen=True)
class DigitsRecord:
    images: int
    zero_shot: RunResult
    coop: RunResult


def write_digits_folder(folder: Path) -> int:
    """scikit-learn's 8x8 digits as a Custom image folder (classes zero..nine), white on black,
    upscaled to 32 px (bicubic); returns the number of images."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        target = folder / DIGIT_NAMES[label]
        target.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray(np.rint(pixels * 255 / 16).astype(np.uint8), mode="L")
        grey.resize((32, 32), Image.BICUBIC).convert("RGB").save(target / f"{index:04d}.png")
    return len(digits.images)


def measure_demo_digits(ws: Workspace) -> DigitsRecord:
    root = ws.folder / "digits_data"
    images = write_digits_folder(root / "digits")

    def argv(trainer: str, *extra: str) -> list[str]:
        return ["--root", str(root), "--seed", str(SEED), "--trainer", trainer,
                "--dataset-config-file", config("datasets", "custom.yaml"),
                "--config-file", str(REPO_ROOT / DEMO_CONFIG),
                "--output-dir", str(ws.folder / "runs" / f"digits-{trainer}"), *extra, "DATASET.CUSTOM.DIR", "digits"]

    zero_shot = run_train(argv("ZeroshotCLIP", "--eval-only"))
    coop = run_train(argv("CoOp", "DATASET.NUM_SHOTS", str(SHOTS)))
    return DigitsRecord(images, zero_shot, coop)


def render_demo_digits(record: DigitsRecord, prov: Provenance) -> str:
    classes = record.zero_shot.num_classes
    text = paragraph(
        f"Tried on scikit-learn's 8x8 digits ({record.images} images, written as a Custom image folder with "
        f"classes `zero`..`nine`, white on black, upscaled to 32 px; the Custom dataset's default split, "
        f"seed {SEED}, {record.zero_shot.num_test} test images): zero-shot CLIP scores "
        f"{pct(record.zero_shot.accuracy)} and CoOp ({SHOTS} shots, `{DEMO_CONFIG}`) "
        f"{pct(record.coop.accuracy)}; chance for {classes} classes is {pct(100.0 / classes)}. "
        "For real data use a real CLIP (`MODEL.BACKBONE.NAME ViT-B/16`, below)."
    )
    return "\n\n".join([text, prov.line()])


# ------------------------------------------------------------------------------------ block: quick start
@dataclass(frozen=True)
class QuickStartRecord:
    wall_s: float  # the whole `python parallel_runner.py --cfg skip_tuning`, a fresh data root included
    runs: int  # train.py runs that wrote results.json
    datasets: list[str]
    seeds: list[int]


QUICK_START_TASK = "skip_tuning"
# Appended to a copy of configs.py: the demo world, with everything written under one temporary folder.
SWEEP_OVERRIDE = """
# --- benchmarks.readme_numbers: the demo world, outputs in a temporary folder
base['data']['root'] = None
base['output'] = dict(base['output'], root={root!r} + '/outputs', result={root!r} + '/results/acc',
                      cost={root!r} + '/results/cost')
base['demo']['output'] = dict(root={root!r} + '/outputs/demo', result={root!r} + '/results/demo/acc',
                              cost={root!r} + '/results/demo/cost')
"""


def measure_quick_start(ws: Workspace) -> QuickStartRecord:
    from runner.config import deep_merge, load_sweep_module

    folder = ws.folder / "quick_start"
    folder.mkdir()
    sweep = folder / "configs.py"
    sweep.write_text((REPO_ROOT / "configs.py").read_text() + SWEEP_OVERRIDE.format(root=str(folder)))
    module = load_sweep_module(str(sweep))
    demo = deep_merge(module.base, getattr(module, QUICK_START_TASK))["demo"]
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    env["CLIP_ADAPT_DEMO_DATA"] = str(folder / "demo_data")  # a fresh machine: the data are generated too
    command = [sys.executable, "parallel_runner.py", "--configs", str(sweep), "--cfg", QUICK_START_TASK, "--no-mail"]
    log = folder / "parallel_runner_output.txt"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{tail}")
    runs = sum("results.json" in files for _, _, files in os.walk(folder / "outputs"))
    return QuickStartRecord(wall, runs, list(demo["datasets_base_to_new"]), [int(s) for s in demo["seeds"]])


def render_quick_start(record: QuickStartRecord, prov: Provenance) -> str:
    text = paragraph(
        f"The first line runs Skip Tuning's base-to-new protocol on the demo world ({len(record.datasets)} "
        f"datasets x {len(record.seeds)} seeds, train on base classes, evaluate on new ones: {record.runs} "
        "`train.py` runs) and writes `results/demo/acc/skip_tuning/*.csv`, `results/demo/cost/skip_tuning/*.csv` "
        "and the plots in `results/demo/acc/`. Once installed, it took "
        f"{seconds(record.wall_s)} on the machine below, generating the demo data included. "
        "The second runs the test suite."
    )
    return "\n\n".join([text, prov.line()])


# ------------------------------------------------------------------------------------ block: cost benchmark
@dataclass(frozen=True)
class BenchmarkRecord:
    records: list[dict]  # benchmarks.train_step's JSON records, one per trainer
    argv: tuple[str, ...]


def measure_cost_benchmark(ws: Workspace) -> BenchmarkRecord:
    from benchmarks import train_step

    with train_console_on_stderr():
        records = train_step.main(list(BENCHMARK_ARGV))
    return BenchmarkRecord(records, BENCHMARK_ARGV)


STEP_KINDS = {"eval_batch": "eval batch", "train_step": "train step"}


def varying(records: list[dict], key: str, default: Any) -> list:
    """The distinct values of `key` over the records, in order of appearance."""
    return list(dict.fromkeys(r.get(key, default) for r in records))


def benchmark_table(records: list[dict]) -> str:
    """The README's cost table; ratios against FinetuneCLIP of the same mode and class count. A mode or
    classes column appears when the records hold more than one."""
    from benchmarks.train_step import baseline

    shown = [key for key, default in (("mode", "exact"), ("classes", None)) if len(varying(records, key, default)) > 1]

    def row(r: dict) -> list[str]:
        base = baseline(r, records)

        def ratio(key: str) -> str:
            return f"{r[key] / base[key]:.2f}" if base and base[key] else "-"
        return [
            r["trainer"], *[str(r.get(key, "exact")) for key in shown],
            STEP_KINDS.get(r["step_kind"], r["step_kind"]), f"{r['median_step_s']:.2f}",
            ratio("median_step_s"), f"{r['peak_memory_mb']:.0f}", f"{r['step_memory_mb']:.0f}",
            ratio("step_memory_mb"), f"{r['trainable_params']:,}", f"{r['flops_per_step'] / 1e9:.1f}",
            ratio("flops_per_step"), f"{r['flops_per_step'] / r['median_step_s'] / 1e9:.0f}",
            pct(100 * r["gemm_fraction"]) if "gemm_fraction" in r else "-",
        ]

    memory = "peak RSS MB" if records and records[0]["peak_memory_kind"].startswith("cpu") else "peak MB"
    header = ["trainer", *shown, "step", "median s", "× FT", memory, "step MB", "× FT", "trainable params",
              "GFLOPs/step", "× FT", "GFLOP/s", "of GEMM"]
    return markdown_table(header, [row(r) for r in records])


def gemm_sentence(records: list[dict]) -> str:
    """'GEMM rate of this machine (2048² × 2048): 150 GFLOP/s in float32, 40 in bfloat16.' or ''."""
    rates = {r["compute_dtype"]: r for r in records if "gemm_gflops_per_s" in r}
    if not rates:
        return ""
    size = next(iter(rates.values()))["gemm_size"]
    parts = [f"{r['gemm_gflops_per_s']:.0f} GFLOP/s in {dtype}" for dtype, r in rates.items()]
    return (f"\"of GEMM\" is the step's GFLOP/s over this machine's rate for a square GEMM ({size}³, measured in "
            f"the same run): {', '.join(parts)}.")


def times(reference: float, value: float, less: str, more: str) -> str:
    """'2.5× less' when `value` is below `reference`, else '1.2× more'."""
    if value <= 0 or reference <= 0:
        return "-"
    return f"{reference / value:.1f}× {less}" if value < reference else f"{value / reference:.1f}× {more}"


def precision_words(records: list[dict]) -> str:
    """'fp32', or 'exact mode fp32, fast mode bfloat16 autocast on fp32 weights' when both were measured."""
    words = []
    for mode in varying(records, "mode", "exact"):
        r = next(r for r in records if r.get("mode", "exact") == mode)
        words.append(f"{mode} mode {r['compute_dtype']} autocast on {r['precision']} weights" if mode == "fast"
                     else f"{mode} mode {r['precision']}")
    return ", ".join(words) if len(words) > 1 else records[0]["precision"]


def class_words(records: list[dict]) -> str:
    counts = [str(c) for c in varying(records, "classes", None)]
    return (f"{', '.join(counts[:-1])} and {counts[-1]}" if len(counts) > 1 else counts[0]) + " classes"


def render_cost_benchmark(record: BenchmarkRecord, prov: Provenance) -> str:
    first = record.records[0]
    # The sentences compare exact-mode steps at the first class count.
    by_name = {r["trainer"]: r for r in record.records
               if r.get("mode", "exact") == "exact" and r["classes"] == first["classes"]}
    geometry = {"vit_b16": "ViT-B/16"}.get(first["geometry"], first["geometry"])
    settings = paragraph(
        f"{geometry} geometry, {precision_words(record.records)}, batch "
        f"{first['batch']}, {class_words(record.records)}, {first['image_size']} px, {first['steps']} timed steps, "
        f"{first['threads']} torch threads, torch {first['torch']}."
    )
    command = f"Command: `python -m benchmarks.train_step {' '.join(record.argv)}`."
    parts = [settings + "\n" + command, benchmark_table(record.records)]
    gemm = gemm_sentence(record.records)
    if gemm:
        parts.append(paragraph(gemm))
    ft, skip = by_name.get("FinetuneCLIP"), by_name.get("SkipTuning")
    if skip and "cache_s_per_batch" in skip:
        parts.append(paragraph(
            f"Skip Tuning's cache extraction (the frozen prefix, once per image per epoch) cost "
            f"{skip['cache_s_per_batch']:.2f} s and {skip['cache_flops_per_batch'] / 1e9:.1f} GFLOPs per batch of "
            f"{skip['batch']} images, which gives {skip['median_step_incl_cache_s']:.2f} s per step including the "
            f"cache. Trainable parameters: {skip['trainable_params']:,} for Skip Tuning with "
            f"ω = {skip['trainer_cfg']['SKIP']['START_LAYER']}" + (f", {ft['trainable_params']:,} for FT-CLIP." if ft else ".")
        ))
    if skip and ft:
        parts.append(paragraph(
            "Against FT-CLIP at the same batch, a Skip Tuning step here takes "
            f"{times(ft['median_step_s'], skip['median_step_s'], 'less', 'more')} time, "
            f"{times(ft['step_memory_mb'], skip['step_memory_mb'], 'less', 'more')} step memory and "
            f"{times(ft['flops_per_step'], skip['flops_per_step'], 'fewer', 'more')} FLOPs. The gap grows with "
            "the number of classes, because CSkip caps the always-kept classes at 50, and it also depends on the "
            "precision and the device. Re-run the benchmark on CUDA for GPU figures."
        ))
    parts.append(prov.line())
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------ block: CoCoOp batching
@dataclass(frozen=True)
class BatchingRecord:
    record: dict  # benchmarks.cocoop_batching's JSON record
    argv: tuple[str, ...]


def measure_cocoop_batching(ws: Workspace) -> BatchingRecord:
    from benchmarks import cocoop_batching

    with train_console_on_stderr():
        record = cocoop_batching.main(list(COCOOP_BATCHING_ARGV))
    return BatchingRecord(record, COCOOP_BATCHING_ARGV)


def batching_table(results: list[dict]) -> str:
    header = ["variant", "text calls / step", "tokens / prompt", "max abs Δlogit", "train step s", "s / image",
              "× loop", "step MB", "eval batch s", "× loop"]
    rows = [[
        r["variant"], str(r["text_calls_per_step"]), str(r["tokens_per_prompt"]), f"{r['max_abs_logit_diff']:.1e}",
        f"{r['median_step_s']:.2f}", f"{r['step_s_per_image']:.2f}", f"{r['speedup_step']:.1f}",
        f"{r['step_memory_mb']:.0f}", f"{r['median_eval_s']:.2f}", f"{r['speedup_eval']:.1f}",
    ] for r in results]
    return markdown_table(header, rows)


def render_cocoop_batching(record: BatchingRecord, prov: Provenance) -> str:
    r = record.record
    batched, chunked, loop = r["results"]
    geometry = {"vit_b16": "ViT-B/16"}.get(r["geometry"], r["geometry"])
    settings = paragraph(
        f"{geometry} geometry (random weights), {r['precision']}, batch {r['batch']}, {r['classes']} classes, "
        f"{r['image_size']} px, {r['steps']} timed steps, {r['threads']} torch threads, torch {r['torch']}; "
        f"memory: {'peak RSS' if r['memory_kind'].startswith('cpu') else 'CUDA max allocated'} during the steps "
        "minus the memory in use before them."
    )
    command = f"Command: `python -m benchmarks.cocoop_batching {' '.join(record.argv)}`."
    summary = paragraph(
        f"The batched step takes {times(loop['median_step_s'], batched['median_step_s'], 'less', 'more')} time "
        f"per image than the per-image loop and {times(loop['step_memory_mb'], batched['step_memory_mb'], 'less', 'more')} "
        f"step memory, at logits equal within {r['logit_tolerance']:.1e} (the fp32 bound of two text-tower "
        f"evaluations). Chunks of at most {r['chunk_mb']:g} MB take "
        f"{times(batched['step_memory_mb'], chunked['step_memory_mb'], 'less', 'more')} step memory than one call, "
        f"for {chunked['median_step_s'] / batched['median_step_s']:.1f}× its time (each chunk's forward runs "
        "again in the backward pass)."
    )
    return "\n\n".join([settings + "\n" + command, batching_table(r["results"]), summary, prov.line()])


# ------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Block:
    """A generated part of README.md: how to measure it and how to write it."""

    name: str
    summary: str
    measure: Callable[[Workspace], Any]
    render: Callable[[Any, Provenance], str]


# In README order (the order they are measured and printed in).
BLOCKS: dict[str, Block] = {b.name: b for b in (
    Block("quick_start", "wall time of `python parallel_runner.py --cfg skip_tuning` on the demo world (~1-2 min)",
          measure_quick_start, render_quick_start),
    Block("demo_digits", "the demo CLIP on scikit-learn's digits: zero-shot and CoOp (~30 s)",
          measure_demo_digits, render_demo_digits),
    Block("demo_zero_shot", "zero-shot accuracy of the demo CLIP on the demo datasets, warm and neutral light (~1 min)",
          measure_demo_zero_shot, render_demo_zero_shot),
    Block("demo_coop", "CoOp vs zero-shot CLIP on DemoShapes' base/new classes, and run times (~1 min)",
          measure_demo_coop, render_demo_coop),
    Block("cocoop_batching", "CoCoOp's batched text encoding vs the original's per-image loop, ViT-B/16 (~5 min)",
          measure_cocoop_batching, render_cocoop_batching),
    Block("cost_benchmark", "benchmarks.train_step on the ViT-B/16 geometry, every trainer (several minutes)",
          measure_cost_benchmark, render_cost_benchmark),
)}


@dataclass
class BlockOutcome:
    name: str
    markdown: str
    wall_s: float
    records: Any = field(repr=False, default=None)


def regenerate(names: list[str], workspace: Workspace) -> list[BlockOutcome]:
    """Measure and render the named blocks, in order."""
    outcomes = []
    for name in names:
        block = BLOCKS[name]
        print(f"[readme_numbers] {name}: {block.summary}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with OtherWorkMeter() as others:
            record = block.measure(workspace)
        wall = time.perf_counter() - start
        prov = replace(Provenance.now(name), others=others.cores)
        print(f"[readme_numbers] {name}: measured in {wall:.0f} s", file=sys.stderr, flush=True)
        if prov.busy():
            print(f"[readme_numbers] warning: other processes kept {prov.others:.1f} of {prov.cores} cores busy "
                  f"meanwhile: the times of {name} are longer than on an idle machine", file=sys.stderr, flush=True)
        outcomes.append(BlockOutcome(name, block.render(record, prov), wall, record))
    return outcomes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="regenerate only these blocks (see --list)")
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in README.md (default: print them)")
    parser.add_argument("--list", action="store_true", help="list the block names and exit")
    parser.add_argument("--readme", default=str(README), help=argparse.SUPPRESS)
    return parser


def selected_blocks(only: list[str] | None) -> list[str]:
    if not only:
        return list(BLOCKS)
    unknown = [n for n in only if n not in BLOCKS]
    if unknown:
        raise ConfigValueError(f"--only: unknown block {', '.join(unknown)}; known blocks: {', '.join(BLOCKS)}.")
    return [n for n in BLOCKS if n in only]  # README order, each once


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for block in BLOCKS.values():
            print(f"{block.name:16s} {block.summary}")
        return 0
    names = selected_blocks(args.only)
    readme = Path(args.readme)
    require_blocks(readme.read_text(encoding="utf-8"), names, str(readme))  # before minutes of measuring
    with tempfile.TemporaryDirectory(prefix="readme_numbers-") as tmp:
        outcomes = regenerate(names, Workspace(Path(tmp)))
    if args.write:
        text = readme.read_text(encoding="utf-8")  # re-read: the file may have been edited meanwhile
        write_atomically(readme, replace_blocks(text, {o.name: o.markdown for o in outcomes}, str(readme)))
        print(f"Rewrote {', '.join(o.name for o in outcomes)} in {readme}", file=sys.stderr)
    else:
        print("\n\n".join(wrap_block(o.name, o.markdown) for o in outcomes))
    for o in outcomes:
        print(f"[readme_numbers] {o.name}: {o.wall_s:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
