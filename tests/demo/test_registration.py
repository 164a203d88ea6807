"""`import demo` registers the demo CLIP name and datasets; clip/ and datasets/ do not know the demo."""
from __future__ import annotations

import subprocess
import sys

import clip
import demo
from datasets.doctor import resolve_dataset_name
from engine.data import DATASET_REGISTRY
from tests.conftest import REPO_ROOT

DEMO_DATASET_NAMES = ("DemoShapes", "DemoShapesSketch", "DemoSymbols")


def test_import_demo_registers_the_clip_name_and_the_datasets():
    assert clip.resolve_checkpoint(demo.DEMO_MODEL_NAME) == demo.DEMO_CLIP_PATH
    for name in DEMO_DATASET_NAMES:
        assert DATASET_REGISTRY.get(name).__module__ == "demo.datasets"
    assert resolve_dataset_name("demo_shapes") == "DemoShapes"  # configs/datasets/demo_shapes.yaml


def test_demo_clip_preprocessing_matches_the_built_model():
    cfg = clip.preprocess_cfg(demo.DEMO_MODEL_NAME)
    model, _ = clip.load(demo.DEMO_MODEL_NAME)
    assert cfg == model.preprocess_cfg
    assert cfg["input_size"] == (3, model.visual.input_resolution, model.visual.input_resolution)


# In a fresh interpreter: clip, datasets and the doctor import nothing of demo, and `import demo`
# leaves the runnable modules unimported (`python -m demo.make_data` would otherwise warn and run twice).
_IMPORT_GRAPH = """
import sys
import clip, datasets, datasets.doctor
assert not [m for m in sys.modules if m == "demo" or m.startswith("demo.")], sorted(sys.modules)
from engine.data import DATASET_REGISTRY
assert not [n for n in %r if n in DATASET_REGISTRY], "demo datasets registered without import demo"
assert "demo" not in clip.loading.LOCAL_MODELS
import demo
assert not {"demo.make_data", "demo.pretrain_clip", "demo.doctor"} & set(sys.modules)
print("ok")
""" % (DEMO_DATASET_NAMES,)


def test_only_import_demo_brings_the_demo_in():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_GRAPH], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
