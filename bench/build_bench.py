"""Throughput of the offline builder against Pillow's decode-only rate, on full-size radiographs.

    .venv/bin/python bench/build_bench.py [--nih_dir=../shared/data/nih_sample] [--copies=4] \
        [--json_out=FILE]

Uses the real 1024x1024 NIH PNGs when `--nih_dir` holds them (each listed `--copies` times under
new names, through symlinks, so the run is long enough to time), else synthetic 1024x1024 ones.
TensorFlow's one-off import (~3 s per build, noise on NIH's 112k images) happens before timing.
Rows: Pillow decode of the same files on one core; the whole build with --workers=1; with
--workers=2. Targets on a 2-core machine: workers1 >= 0.8 x decode-only, workers2 >= 1.7 x workers1.

Beam rows (`--runner=beam`, the same images, CSVs and flags): Beam's DirectRunner as the builder
runs it by default (in this process, one worker), against --workers=1; and with
`--direct_num_workers=2 --direct_running_mode=multi_processing`, against --workers=2. The ratios
are figures, not targets: the DirectRunner is Beam's test runner, here to show what the engine
costs on one host, not how Dataflow or Flink scale.

DICOM rows: the same source images (RGBA ones made gray first) written by pydicom into the run's
temporary folder as 8-bit MONOCHROME2 DICOM files, once uncompressed (explicit VR little endian)
and once as baseline JPEG (Pillow's encoder at quality 90, close to the quantisation tables of the
real SIIM file in ../shared/data/dicom), each listed as many times as the PNGs. Per variant:
`preprocess.dicom` decoding the whole image alone on one core (the decode ceiling), and the whole
build with --split_by=unlabeled --workers=1 over that folder; target: build >= 0.8 x decode-only per
core, also given from CPU time (images per CPU-second), which a busy machine moves less.
Also printed: the decode alone as the build does it (an uncropped baseline-JPEG frame at
libjpeg's DCT scale, `preprocess.dicom.to_gray`), which shows what the build adds to it.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from preprocess import (
    builder,  # noqa: E402
    dicom,  # noqa: E402
)
from preprocess import (
    synthetic_data as synthetic,  # noqa: E402
)
from preprocess.config import BuildConfig  # noqa: E402

_NIH_DIR = flags.DEFINE_string("nih_dir", os.path.join("..", "shared", "data", "nih_sample"),
                               "Folder with the real NIH sample (images_00N/images/*.png).")
_COPIES = flags.DEFINE_integer("copies", 4, "Times each real image is listed (as a symlink).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON.")

# key in the figures -> (label in the printout, transfer syntax of the DICOM files)
DICOM_VARIANTS = {
    "dicom_explicit_le": ("DICOM explicit VR LE", ExplicitVRLittleEndian),
    "dicom_jpeg_baseline": ("DICOM JPEG baseline", JPEGBaseline8Bit),
}
DICOM_JPEG_QUALITY = 90


def real_dataset(nih_dir: str, copies: int, out: str) -> tuple[str, str, list[str]]:
    """Symlinks each real image `copies` times; returns (csv, bbox csv, image paths)."""
    sources = sorted(os.path.join(root, n) for root, _, files in os.walk(nih_dir) for n in files
                     if n.endswith(".png"))
    image_dir = os.path.join(out, "images")
    os.makedirs(image_dir)
    rows, boxes, paths = [], [], []
    bbox = {}
    with open(os.path.join(nih_dir, "BBox_List_2017.csv")) as f:
        for line in f.readlines()[1:]:
            cells = line.strip().split(",")
            bbox.setdefault(cells[0], []).append(cells)
    for copy in range(copies):
        for i, src in enumerate(sources):
            name = f"{copy:04d}{i:04d}_000.png"
            os.symlink(os.path.abspath(src), os.path.join(image_dir, name))
            paths.append(os.path.join(image_dir, name))
            label = "Mass" if i % 2 else "No Finding"
            rows.append(f"{name},{label},0,{copy * 1000 + i},50,M,PA,1024,1024,0.143,0.143")
            boxes += [",".join([name] + cells[1:]) for cells in bbox.get(os.path.basename(src), [])]
    csv_path = os.path.join(out, "entries.csv")
    with open(csv_path, "w") as f:
        f.write(synthetic.DATA_ENTRY_HEADER + "\n" + "\n".join(rows) + "\n")
    bbox_path = os.path.join(out, "bbox.csv")
    with open(bbox_path, "w") as f:
        f.write(synthetic.BBOX_HEADER + "\n" + "\n".join(boxes) + "\n")
    return csv_path, bbox_path, paths


def synthetic_dataset(out: str) -> tuple[str, str, list[str]]:
    synthetic.generate(synthetic.SyntheticConfig(output_dir=out, num_patients=150, source_size=1024))
    image_dir = os.path.join(out, "images_001", "images")
    paths = sorted(os.path.join(image_dir, n) for n in os.listdir(image_dir))
    return (os.path.join(out, "Data_Entry_2017_v2020.csv"), os.path.join(out, "BBox_List_2017.csv"), paths)


def write_dicom(path: str, gray: Image.Image, syntax: str, patient_id: str) -> None:
    """Writes an "L" image as a single-frame 8-bit MONOCHROME2 DICOM file in `syntax`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = patient_id
    ds.ViewPosition = "PA"
    ds.set_pixel_data(np.asarray(gray), "MONOCHROME2", 8)
    if syntax == JPEGBaseline8Bit:
        frame = io.BytesIO()
        gray.save(frame, format="JPEG", quality=DICOM_JPEG_QUALITY)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([frame.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.save_as(path, enforce_file_format=True)


def dicom_dataset(sources: list[str], listings: int, syntax: str, out: str) -> list[str]:
    """Writes each source image once as DICOM beside `out` ("<out>_files"), then lists it
    `listings` times in `out` (symlinks, as the PNG rows do); returns the listed paths."""
    files_dir = out + "_files"  # outside `out`: the build must see the listings only
    os.makedirs(files_dir)
    os.makedirs(out)
    written = []
    for i, src in enumerate(sources):
        with Image.open(src) as image:
            gray = image if image.mode == "L" else image.convert("L")
            path = os.path.join(files_dir, f"{i:04d}.dcm")
            write_dicom(path, gray, syntax, os.path.splitext(os.path.basename(src))[0])
        written.append(path)
    paths = []
    for copy in range(listings):
        for i, path in enumerate(written):
            link = os.path.join(out, f"{copy:04d}{i:04d}.dcm")
            os.symlink(path, link)
            paths.append(link)
    return paths


def dicom_decode_only(paths: list[str], draft_size: int | None = None) -> tuple[float, float]:
    """`preprocess.dicom` alone: the whole image, or as the builder decodes it for `draft_size`
    px without a crop (a baseline-JPEG frame at libjpeg's DCT scale, other syntaxes whole).
    Returns (images/s, CPU ms per image)."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    for path in paths:
        with open(path, "rb") as f:
            frame = dicom.open_frame(f.read(), BuildConfig.max_image_pixels)
        dicom.to_gray(frame, draft_size)
    return len(paths) / (time.perf_counter() - start), 1000 * (_cpu_seconds() - cpu) / len(paths)


def dicom_build_rate(image_dir: str, expected: int, out: str) -> tuple[float, float]:
    """The whole build of the DICOM files under `image_dir`, --split_by=unlabeled --workers=1:
    (images/s, CPU ms per image)."""
    config = BuildConfig(image_dir=image_dir, output_dir=out, split_by="unlabeled", workers=1)
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = builder.build(config)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    records = result.manifest["splits"]["eval"]["records"]
    if not result.ok or records != expected:
        raise RuntimeError(f"expected {expected} records: {result.summary}")
    return records / elapsed, 1000 * cpu / records


def dicom_rows(sources: list[str], listings: int, work: str) -> dict[str, float]:
    """Each DICOM variant of `sources`: decode-only (whole, and as the build decodes), the build."""
    figures = {}
    for key, (_, syntax) in DICOM_VARIANTS.items():
        dicom_dir = os.path.join(work, key)
        paths = dicom_dataset(sources, listings, syntax, dicom_dir)
        dicom_decode_only(paths[:20])  # the same warm-up as the PNG rows
        figures[f"{key}_decode_only_img_s"], figures[f"{key}_decode_only_cpu_ms"] = dicom_decode_only(paths)
        figures[f"{key}_decode_at_build_scale_img_s"], _ = dicom_decode_only(paths, BuildConfig.image_size)
        figures[f"{key}_workers1_img_s"], figures[f"{key}_workers1_cpu_ms"] = dicom_build_rate(
            dicom_dir, len(paths), os.path.join(work, f"{key}_w1"))
        # Per core: images per CPU-second, which other work on the machine does not move.
        figures[f"{key}_per_core_ratio"] = figures[f"{key}_decode_only_cpu_ms"] / figures[f"{key}_workers1_cpu_ms"]
    return figures


def decode_only(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return len(paths) / (time.perf_counter() - start)


# row -> --beam_pipeline_args of that row
BEAM_ROWS = {
    "beam_direct": "",
    "beam_direct_2proc": "--direct_num_workers=2 --direct_running_mode=multi_processing",
}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's and Beam's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def build_rate(csv_path: str, bbox_path: str, image_dir: str, workers: int | None, out: str,
               beam_args: str | None = None) -> tuple[float, float]:
    """The whole build: (records/s, CPU ms per record, every process's), with the local process
    pool, or with Beam and `beam_args`. CPU time per record holds when other work shares the cores."""
    runner = {} if beam_args is None else {"runner": "beam", "beam_pipeline_args": beam_args}
    # --crop=bbox, as bench/RESULTS.md's figures were measured (the reference's mode, not the default).
    config = BuildConfig(data_entry_csv=csv_path, bbox_csv=bbox_path, image_dir=image_dir,
                         output_dir=out, split_by="all", crop="bbox", workers=workers, **runner)
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = builder.build(config)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if not result.ok:
        raise RuntimeError(result.summary)
    records = result.manifest["splits"]["all"]["records"]
    return records / elapsed, 1000 * cpu / records


def main(argv: list[str]) -> None:
    del argv
    # TensorFlow and Beam load in this process before the clock starts. Not at the top of the
    # module: spawned workers import the main module, and must stay as light as the builder's own.
    from preprocess import beam_runner, shard_writer  # noqa: F401
    # Beam's multi-processing workers are fresh interpreters: they find the project through this.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    work = tempfile.mkdtemp(prefix="build_bench_")
    try:
        if os.path.isdir(os.path.join(_NIH_DIR.value, "images_001")):
            csv_path, bbox_path, paths = real_dataset(_NIH_DIR.value, _COPIES.value, work)
            source = f"{len(paths)} real NIH radiographs ({_COPIES.value} listings of each)"
        else:
            csv_path, bbox_path, paths = synthetic_dataset(work)
            source = f"{len(paths)} synthetic 1024x1024 radiographs"
        image_dir = os.path.dirname(paths[0])
        decode_only(paths[:20])  # warm the page cache so every row reads from memory
        figures = {"decode_only_img_s": decode_only(paths)}
        rows = {"workers1": (1, None), "workers2": (2, None),
                **{key: (None, beam_args) for key, beam_args in BEAM_ROWS.items()}}
        for key, (workers, beam_args) in rows.items():
            figures[f"{key}_img_s"], figures[f"{key}_cpu_ms_per_img"] = build_rate(
                csv_path, bbox_path, image_dir, workers, os.path.join(work, key), beam_args)
        sources = sorted({os.path.realpath(p) for p in paths})
        figures.update(dicom_rows(sources, len(paths) // len(sources), work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["workers1_over_decode_only"] = figures["workers1_img_s"] / figures["decode_only_img_s"]
    figures["workers2_over_workers1"] = figures["workers2_img_s"] / figures["workers1_img_s"]
    figures["beam_direct_over_workers1"] = figures["beam_direct_img_s"] / figures["workers1_img_s"]
    figures["beam_direct_2proc_over_workers2"] = figures["beam_direct_2proc_img_s"] / figures["workers2_img_s"]
    for key in DICOM_VARIANTS:
        figures[f"{key}_workers1_over_decode_only"] = (figures[f"{key}_workers1_img_s"]
                                                       / figures[f"{key}_decode_only_img_s"])
    print(f"source: {source}; cores: {os.cpu_count()}")
    print(f"decode-only (Pillow, 1 core): {figures['decode_only_img_s']:7.1f} img/s")
    print(f"build --workers=1:            {figures['workers1_img_s']:7.1f} img/s  "
          f"({figures['workers1_over_decode_only']:.2f} x decode-only; target >= 0.8)")
    print(f"build --workers=2:            {figures['workers2_img_s']:7.1f} img/s  "
          f"({figures['workers2_over_workers1']:.2f} x workers=1; target >= 1.7)")
    print(f"build --runner=beam (DirectRunner, in process): {figures['beam_direct_img_s']:7.1f} img/s  "
          f"({figures['beam_direct_over_workers1']:.2f} x workers=1; a figure, not a target)")
    print(f"build --runner=beam (DirectRunner, 2 processes): {figures['beam_direct_2proc_img_s']:7.1f} img/s  "
          f"({figures['beam_direct_2proc_over_workers2']:.2f} x workers=2; a figure, not a target)")
    print("CPU ms per image, all processes: " + ", ".join(
        f"{row} {figures[f'{row}_cpu_ms_per_img']:.1f}" for row in ("workers1", "workers2", *BEAM_ROWS)))
    for key, (label, _) in DICOM_VARIANTS.items():
        print(f"{label}:")
        print(f"  decode-only (preprocess.dicom, 1 core): {figures[f'{key}_decode_only_img_s']:7.1f} img/s")
        print(f"  decoded as the build decodes it:        {figures[f'{key}_decode_at_build_scale_img_s']:7.1f} img/s")
        print(f"  build --split_by=unlabeled --workers=1:    {figures[f'{key}_workers1_img_s']:7.1f} img/s  "
              f"({figures[f'{key}_workers1_over_decode_only']:.2f} x decode-only; target >= 0.8)")
        print(f"  per core (CPU ms per image): decode-only {figures[f'{key}_decode_only_cpu_ms']:.2f}, build "
              f"{figures[f'{key}_workers1_cpu_ms']:.2f}: {figures[f'{key}_per_core_ratio']:.2f} x decode-only")
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    app.run(main)
