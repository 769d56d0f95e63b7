"""`manifest.json`'s one writer, and `ShardFolder`, a shard folder read and checked once. Keys:
`schema_version`, `config`, `splits`, `patient_overlap`, `skipped`, `warnings`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from contracts import storage
from contracts.atomic import write_json
from contracts.errors import UserInputError

MANIFEST = "manifest.json"
# 1: before the manifest recorded its version; 2: before records carried patient sex and age;
# 3: before records carried every box with its finding; 4: before records said whether their findings
# are known; 5: before records carried their study. Older records read with defaults.
SCHEMA_VERSION = 6
FINDINGS_KNOWN_SINCE = 5
STUDY_ID_SINCE = 6
SHARD_SUFFIX = ".tfrecord"
SHARD_BYTES = "shard_bytes"  # per split: shard name -> its size as written (absent in older manifests)
# Per split (absent before schema 5): records whose findings are known, and each finding's positives
# among them, in contracts.labels.FINDINGS order.
FINDINGS_KNOWN = "findings_known"
FINDING_POSITIVES = "finding_positives"
# The split the builder carves (--calibration_fraction) only to fit the triage thresholds: never
# trained, validated or evaluated on by default, so the thresholds' guarantee stays exact.
CALIBRATION_SPLIT = "calibration"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def write_manifest(data_dir: str, manifest: dict[str, Any]) -> str:
    path = storage.join(data_dir, MANIFEST)
    write_json(path, {**manifest, "schema_version": SCHEMA_VERSION})
    return path


@dataclasses.dataclass(frozen=True)
class Split:
    """One split whose shards were found whole: every listed shard present, at its recorded size."""

    name: str
    records: int
    normal: int
    abnormal: int
    paths: tuple[str, ...]
    findings_known: int | None = None  # None: not counted (built before schema 5)
    finding_positives: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ShardFolder:
    """A shard folder (local, `gs://` or any `tf.io.gfile` scheme) with its manifest read once."""

    path: str
    manifest: dict[str, Any]
    image_size: int
    crop: str | None
    _splits: dict[str, Split] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(cls, path: str) -> ShardFolder:
        """Reads `path/manifest.json` (a manifest without `schema_version` reads as version 1)."""
        where = storage.join(path, MANIFEST)
        if not storage.exists(where):
            raise UserInputError(f"{where} not found: {path} is not a shard folder; build one with "
                                 "preprocess/build_tfrecords.py")
        try:
            manifest = json.loads(storage.read_bytes(where))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserInputError(f"{where} is not valid JSON ({err}); rebuild the shard folder or restore "
                                 "the file") from err
        config = manifest.get("config") if isinstance(manifest, dict) else None
        if not isinstance(config, dict) or not isinstance(config.get("image_size"), int):
            raise UserInputError(f"{where} is not a JSON object with config.image_size; rebuild the shard "
                                 "folder or restore the file")
        manifest.setdefault("schema_version", 1)
        return cls(path, manifest, config["image_size"], config.get("crop"))

    manifest_path = property(lambda self: storage.join(self.path, MANIFEST))
    schema_version = property(lambda self: self.manifest["schema_version"])
    split_names = property(lambda self: sorted(self.manifest.get("splits", {})))

    def split(self, name: str) -> Split:
        """The split `name`, its shards checked on the first call (present, inside the folder, whole)."""
        if name not in self._splits:
            self._splits[name] = self._check_split(name)
        return self._splits[name]

    def _check_split(self, name: str) -> Split:
        info = self.manifest.get("splits", {}).get(name)
        if not isinstance(info, dict):
            raise UserInputError(f"split {name!r} not in {self.manifest_path}; it has: "
                                 f"{', '.join(self.split_names) or 'none'}")
        for shard in info["shards"]:
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
                raise UserInputError(
                    f"{self.manifest_path} lists shard {shard!r} for split {name!r}; shards must be file "
                    f"names inside {self.path} (no folders, no ..): rebuild the folder")
        paths = tuple(storage.join(self.path, shard) for shard in info["shards"])
        missing = [p for p in paths if not storage.exists(p)]
        if missing:
            raise UserInputError(f"{len(missing)} shard(s) of split {name!r} listed in the manifest are "
                                 f"missing, e.g. {missing[0]}; rerun the build to complete the folder")
        if SHARD_BYTES in info:
            self._check_sizes(name, paths, info[SHARD_BYTES])
        counts = (int(info.get(key, 0)) for key in ("records", "normal", "abnormal"))
        positives = info.get(FINDING_POSITIVES)
        return Split(name, *counts, paths, info.get(FINDINGS_KNOWN),
                     None if positives is None else tuple(int(n) for n in positives))

    def _check_sizes(self, name: str, paths: tuple[str, ...], written: Any) -> None:
        # A cut copy can end between two records, which TensorFlow reads as a clean end of file.
        if not isinstance(written, dict) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in written.values()):
            raise UserInputError(f"{self.manifest_path}: {SHARD_BYTES} of split {name!r} is not a map of "
                                 "shard name to byte count; restore the file or rebuild the folder")
        for path, shard in zip(paths, self.manifest["splits"][name]["shards"]):
            expected, size = written.get(shard), storage.size(path)
            if expected is not None and size != expected:
                how = "cut short" if size < expected else "longer than written"
                raise UserInputError(
                    f"{path} is {size:,} bytes but the builder wrote {expected:,} ({how}): a damaged or "
                    "partial copy; copy it again from the folder the build wrote, or rerun the build into "
                    "this folder")

    def findings_known(self, split: str) -> bool:
        """Whether records of `split` written before schema 5 have known findings: built from a
        Data_Entry CSV (NIH's Finding Labels) into a labelled split. Newer records say it themselves."""
        config = self.manifest["config"]
        split_by = config.get("split_by", config.get("split"))  # its name before issue 24
        return (self.schema_version < FINDINGS_KNOWN_SINCE and bool(config.get("data_entry_csv"))
                and split_by != "unlabeled")

    @property
    def studies_recorded(self) -> bool:
        """Whether the records carry their study id (older ones read as study unknown)."""
        return self.schema_version >= STUDY_ID_SINCE

    def check_image_size(self, image_size: int | None, fix: str) -> int:
        """The shards' image size, refusing another `image_size` with `fix` ({stored}, {asked} filled in)."""
        if image_size is not None and int(image_size) != self.image_size:
            raise UserInputError(f"the shards in {self.path} were built at {self.image_size} px, not "
                                 f"{image_size}; " + fix.format(stored=self.image_size, asked=image_size))
        return self.image_size

    def default_split(self) -> str | None:
        """`test` when the folder has it, else the only split besides `train` and `calibration` (val,
        all, eval), else None: the calibration split is read only when named."""
        if "test" in self.split_names:
            return "test"
        others = [s for s in self.split_names if s not in ("train", CALIBRATION_SPLIT)]
        return others[0] if len(others) == 1 else None
