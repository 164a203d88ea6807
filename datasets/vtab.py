"""VTAB-1K (Zhai et al., 2019) in the list-file layout used by NOAH, SSF, DyT and PETL-ViT.

Layout under DATASET.ROOT (see DATASETS.md#vtab-1k)::

    vtab-1k/
      <task>/                       e.g. cifar, caltech101, oxford_iiit_pet, clevr_count, ...
        train800.txt  val200.txt  train800val200.txt  test.txt
        images/<split>/000000.jpg ...
        classnames.txt              (optional: one class name per line, in label order)

Each list line is ``<relative image path> <integer label>``; paths are relative to the task folder
and labels are already contiguous (they are never remapped).

One registered class per task, named ``VTAB_<task>`` (``VTAB_cifar``, ``VTAB_dsprites_loc``, ...),
so ``--dataset-config-file configs/datasets/vtab_<task>.yaml`` works without extra keys.
``DATASET.VTAB.PROTOCOL`` picks the splits:

- ``"train800val200"`` (default, the final protocol): train on the 1000 images, test on
  ``test.txt``, no val split (val200 is part of the training data).
- ``"train800"`` (hyper-parameter search): train on train800, val = test = val200, so a search
  never looks at ``test.txt``.

Class names: the list files carry integers only. Tasks with meaningful labels get names written
here as data (TFDS label order); the others get ``class_<i>``. A ``classnames.txt`` in the task
folder overrides both. Folder aliases used by other codebases (``cifar100``, ``pets``, ...) are
accepted when the exported folder name is absent.
"""
from __future__ import annotations

import os

from engine.data import DATASET_REGISTRY, DatasetBase, DatasetError, Datum
from engine.errors import ConfigValueError, MissingFileError

__all__ = ["VTAB_TASKS", "VTAB_GROUPS", "VTAB_FOLDER_ALIASES", "VTABBase", "LIST_FILES", "PROTOCOLS", "read_list_file"]

VTAB_ROOT = "vtab-1k"
LIST_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
PROTOCOLS = ("train800val200", "train800")

# task folder -> (number of classes, test size produced by the VTAB split definitions)
VTAB_TASKS: dict[str, tuple[int, int]] = {
    "cifar": (100, 10000),
    "caltech101": (102, 6084),
    "dtd": (47, 1880),
    "oxford_flowers102": (102, 6149),
    "oxford_iiit_pet": (37, 3669),
    "svhn": (10, 26032),
    "sun397": (397, 21750),
    "patch_camelyon": (2, 32768),
    "eurosat": (10, 5400),
    "resisc45": (45, 6300),
    "diabetic_retinopathy": (5, 42670),
    "clevr_count": (8, 15000),
    "clevr_dist": (6, 15000),
    "dmlab": (6, 22735),
    "kitti": (4, 711),
    "dsprites_loc": (16, 73728),
    "dsprites_ori": (16, 73728),
    "smallnorb_azi": (18, 12150),
    "smallnorb_ele": (9, 12150),
}

VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    "natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "structured": (
        "clevr_count", "clevr_dist", "dmlab", "kitti",
        "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele",
    ),
}

# Folder names other codebases use for the same export (tried when the exported name is absent).
VTAB_FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "cifar": ("cifar100",),
    "oxford_iiit_pet": ("pets", "oxford_pet"),
    "oxford_flowers102": ("flowers102",),
}

# Class names in TFDS label order (the order of the integer labels in the list files).
_CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()
# TFDS lists the 102 Caltech folders lower-cased and sorted (background included).
_CALTECH101 = (
    "accordion airplanes anchor ant background_google barrel bass beaver binocular bonsai brain "
    "brontosaurus buddha butterfly camera cannon car_side ceiling_fan cellphone chair chandelier "
    "cougar_body cougar_face crab crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin "
    "dragonfly electric_guitar elephant emu euphonium ewer faces faces_easy ferry flamingo flamingo_head "
    "garfield gerenuk gramophone grand_piano hawksbill headphone hedgehog helicopter ibis inline_skate "
    "joshua_tree kangaroo ketch lamp laptop leopards llama lobster lotus mandolin mayfly menorah metronome "
    "minaret motorbikes nautilus octopus okapi pagoda panda pigeon pizza platypus pyramid revolver rhino "
    "rooster saxophone schooner scissors scorpion sea_horse snoopy soccer_ball stapler starfish stegosaurus "
    "stop_sign strawberry sunflower tick trilobite umbrella watch water_lilly wheelchair wild_cat "
    "windsor_chair wrench yin_yang"
).split()
_DTD = (
    "banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted "
    "fibrous flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined "
    "marbled matted meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared "
    "spiralled sprinkled stained stratified striped studded swirly veined waffled woven wrinkled zigzagged"
).split()
_PETS = (
    "abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle bengal birman bombay boxer "
    "british_shorthair chihuahua egyptian_mau english_cocker_spaniel english_setter german_shorthaired "
    "great_pyrenees havanese japanese_chin keeshond leonberger maine_coon miniature_pinscher newfoundland "
    "persian pomeranian pug ragdoll russian_blue saint_bernard samoyed scottish_terrier shiba_inu siamese "
    "sphynx staffordshire_bull_terrier wheaten_terrier yorkshire_terrier"
).split()
_EUROSAT = (
    "annual crop land", "forest", "herbaceous vegetation land", "highway or road", "industrial buildings",
    "pasture land", "permanent crop land", "residential buildings", "river", "sea or lake",
)
_RESISC45 = (
    "airplane airport baseball_diamond basketball_court beach bridge chaparral church circular_farmland "
    "cloud commercial_area dense_residential desert forest freeway golf_course ground_track_field harbor "
    "industrial_area intersection island lake meadow medium_residential mobile_home_park mountain overpass "
    "palace parking_lot railway railway_station rectangular_farmland river roundabout runway sea_ice ship "
    "snowberg sparse_residential stadium storage_tank tennis_court terrace thermal_power_station wetland"
).split()


def _spaces(names) -> list[str]:
    return [n.replace("_", " ") for n in names]


CLASSNAMES: dict[str, list[str]] = {
    "cifar": _spaces(_CIFAR100),
    "caltech101": _spaces(_CALTECH101),
    "dtd": list(_DTD),
    "oxford_iiit_pet": _spaces(_PETS),
    "svhn": [str(d) for d in range(10)],  # TFDS maps digit 0 to label 0
    "patch_camelyon": ["healthy lymph node tissue", "lymph node tumor tissue"],
    "eurosat": list(_EUROSAT),
    "resisc45": _spaces(_RESISC45),
    "diabetic_retinopathy": [
        "no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
        "severe diabetic retinopathy", "proliferative diabetic retinopathy",
    ],
    "clevr_count": [f"{n} objects" for n in range(3, 11)],
    "clevr_dist": [
        "closest object nearer than 8", "closest object at 8 to 8.5", "closest object at 8.5 to 9",
        "closest object at 9 to 9.5", "closest object at 9.5 to 10", "closest object farther than 10",
    ],
    "kitti": [
        "closest vehicle nearer than 8 m", "closest vehicle at 8 to 20 m",
        "closest vehicle farther than 20 m", "no vehicle",
    ],
    "dsprites_loc": [f"x position bin {i}" for i in range(16)],
    "dsprites_ori": [f"orientation bin {i}" for i in range(16)],
    "smallnorb_azi": [f"azimuth {20 * i} degrees" for i in range(18)],
    "smallnorb_ele": [f"elevation {30 + 5 * i} degrees" for i in range(9)],
    # oxford_flowers102, sun397 and dmlab: class_<i> (or a classnames.txt in the task folder).
}


def read_list_file(filepath: str, task_dir: str, source: str = "VTAB") -> list[tuple[str, int]]:
    """Parse a VTAB list file into (absolute image path, label) pairs; raise DatasetError on a bad line."""
    out = []
    with open(filepath, "r") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError("expected 2 fields")
                label = int(fields[1])
            except ValueError:
                raise DatasetError(
                    f"{source}: {filepath} line {lineno} should be '<relative image path> <integer label>', "
                    f"got {line.strip()!r}. Re-export the task or fix the file."
                ) from None
            out.append((os.path.join(task_dir, fields[0]), label))
    return out


class VTABBase(DatasetBase):
    """One VTAB-1K task read from its list files; subclasses set `task`."""

    task: str = ""
    required_paths = LIST_FILES
    docs_anchor = "vtab-1k"

    @classmethod
    def find_dataset_dir(cls, root: str) -> str:
        """The task folder under `root`: the exported name, else the first alias that exists."""
        base = os.path.join(os.path.abspath(os.path.expanduser(root)), VTAB_ROOT)
        for name in (cls.task, *VTAB_FOLDER_ALIASES.get(cls.task, ())):
            candidate = os.path.join(base, name)
            if os.path.isdir(candidate):
                return candidate
        return os.path.join(base, cls.task)

    @classmethod
    def default_classnames(cls, task_dir: str, num_classes: int) -> list[str]:
        """classnames.txt in the task folder, else the built-in names, else class_<i>."""
        path = os.path.join(task_dir, "classnames.txt")
        if os.path.isfile(path):
            with open(path, "r") as f:
                names = [line.strip() for line in f if line.strip()]
            if len(names) < num_classes:
                raise DatasetError(
                    f"{cls.__name__}: {path} has {len(names)} names but the labels need {num_classes}. "
                    f"Write one name per line in label order, or delete the file to use the defaults."
                )
            return names
        names = CLASSNAMES.get(cls.task)
        if names is None or len(names) < num_classes:
            return [f"class_{i}" for i in range(num_classes)]
        return list(names)

    @classmethod
    def extra_checks(cls, dataset_dir: str) -> list[str]:
        """Every list file parses, lists existing images and only labels in [0, num_classes)."""
        problems = []
        num_classes = VTAB_TASKS[cls.task][0]
        for name in LIST_FILES:
            path = os.path.join(dataset_dir, name)
            if not os.path.isfile(path):
                continue  # reported through required_paths
            try:
                items = read_list_file(path, dataset_dir, cls.__name__)
            except DatasetError as exc:
                problems.append(str(exc))
                continue
            if not items:
                problems.append(f"{path} is empty")
                continue
            missing = [p for p, _ in items if not os.path.isfile(p)]
            if missing:
                problems.append(f"{path} lists {len(missing)} missing image(s), e.g. {missing[0]}")
            bad = sorted({y for _, y in items if not 0 <= y < num_classes})
            if bad:
                problems.append(f"{path} has labels {bad[:5]} outside [0, {num_classes})")
        return problems

    def __init__(self, cfg) -> None:
        protocol = cfg.DATASET.VTAB.PROTOCOL
        if protocol not in PROTOCOLS:
            raise ConfigValueError(f"DATASET.VTAB.PROTOCOL={protocol!r} is not one of {PROTOCOLS}.")
        self.protocol = protocol
        self.dataset_dir = self.find_dataset_dir(cfg.DATASET.ROOT)
        if not os.path.isdir(self.dataset_dir):
            aliases = VTAB_FOLDER_ALIASES.get(self.task, ())
            also = f" (or one of the aliases {', '.join(aliases)})" if aliases else ""
            raise MissingFileError(
                f"Dataset folder not found: {self.dataset_dir}{also} (DATASET.ROOT={cfg.DATASET.ROOT}). "
                f"See {self.docs_ref()}."
            )
        num_classes = VTAB_TASKS[self.task][0]
        self._names = self.default_classnames(self.dataset_dir, num_classes)

        if protocol == "train800val200":
            train = self._read("train800val200.txt")
            val = None
            test = self._read("test.txt")
        else:
            train = self._read("train800.txt")
            val = self._read("val200.txt")
            test = list(val)

        train, val = self.load_or_generate_fewshot(cfg, self.dataset_dir, train, val)
        if val is None:
            train, test = self.subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        else:
            train, val, test = self.subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def fewshot_cache_dir(self, cfg, dataset_dir: str) -> str:
        """Separate caches per protocol: the two protocols sample from different training lists."""
        base = super().fewshot_cache_dir(cfg, dataset_dir)
        return base if self.protocol == "train800val200" else base + "_train800"

    def _read(self, filename: str) -> list[Datum]:
        path = os.path.join(self.dataset_dir, filename)
        if not os.path.isfile(path):
            raise DatasetError(
                f"{type(self).__name__}: list file {path} is missing. The VTAB-1K export has "
                f"{', '.join(LIST_FILES)} in every task folder; see {self.docs_ref()}."
            )
        items = read_list_file(path, self.dataset_dir, type(self).__name__)
        if not items:
            raise DatasetError(f"{type(self).__name__}: list file {path} is empty. See {self.docs_ref()}.")
        out = []
        for impath, label in items:
            if not 0 <= label < len(self._names):
                raise DatasetError(
                    f"{type(self).__name__}: {path} has label {label}, outside [0, {len(self._names)}) "
                    f"for task {self.task!r}. Is this the right task folder?"
                )
            try:
                out.append(Datum(impath=impath, label=label, classname=self._names[label]))
            except FileNotFoundError as exc:
                raise DatasetError(
                    f"{type(self).__name__}: {path} lists {impath}, which does not exist. "
                    f"Is the images/ folder complete? See {self.docs_ref()}."
                ) from exc
        return out


def _register_tasks() -> dict[str, type]:
    """Create and register VTAB_<task> for every task (one class each, so a YAML names it directly)."""
    classes = {}
    for task, (n_classes, n_test) in VTAB_TASKS.items():
        name = f"VTAB_{task}"
        cls = type(
            name,
            (VTABBase,),
            {
                "task": task,
                "dataset_dir": f"{VTAB_ROOT}/{task}",
                "official_counts": {"classes": n_classes, "train": 1000, "test": n_test},
                "__doc__": f"VTAB-1K task {task!r}: {n_classes} classes, {n_test} test images.",
                "__module__": __name__,
            },
        )
        DATASET_REGISTRY.register(cls)
        classes[name] = cls
    return classes


VTAB_CLASSES = _register_tasks()
globals().update(VTAB_CLASSES)
