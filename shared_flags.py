"""The one meaning of every flag name that several tools take: name -> absl definer and arguments.

`flags.share` defines a name from here into a tool's flags, with that tool's default and a note
on what the value does there; no tool defines these names any other way (tests/test_one_owner.py).
Imports nothing heavy, so `--help` stays fast.
"""

from __future__ import annotations

import functools

from absl import flags

_STRING, _INTEGER, _FLOAT, _ENUM = flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float, flags.DEFINE_enum


def _inputs_and_outputs() -> dict[str, tuple]:
    """What a tool reads and writes."""
    from contracts import run_folder

    return {
        "data_dir": (_STRING, dict(default=None, help="Shard folder written by build_tfrecords.py (holds manifest.json).")),
        "split": (_STRING, dict(default=None, help="Split of --data_dir to read, e.g. test, val or eval.")),
        "images": (_STRING, dict(default=None, help=(
            "Instead of --data_dir: raw PNG, JPEG or DICOM files, a folder (searched recursively, DICOM "
            "found by content) or a quoted glob, decoded and resized by the builder's own code into a "
            "temporary shard folder that is removed afterwards. DICOM files are keyed by their path under "
            "the folder."))),
        "model_dir": (flags.DEFINE_multi_string, dict(default=None, help=(
            f"Folder of a train.py run ({run_folder.MODEL} + {run_folder.CONFIG})."))),
        "ensemble": (_STRING, dict(default=None, help=(
            "The .probabilities.json that ensemble.py wrote beside its submission (members, weights, "
            "threshold); the --model_dir folders must be exactly its members."))),
        "output": (_STRING, dict(default=None, help="The CSV this tool writes.")),
        "output_dir": (_STRING, dict(default=None, help="The folder this tool writes into.")),
        "labels_csv": (_STRING, dict(default=None, help=(
            "Labels of the images, for some or all of them: a CSV keyed by image_id (file name, or a DICOM "
            "file's path under the folder), Image Index or SOPInstanceUID, with a 0/1 'label' or NIH "
            "'Finding Labels' column. Images it does not name stay unlabeled (-1)."))),
        "other_labels_csv": (_STRING, dict(default=None, help=(
            "Another reading of the same images (e.g. a radiologist panel's): the report rescores against it "
            "on the images both share, with Cohen's kappa against the images' own labels (other_labels.json). "
            "Columns: image_id (or Image Index or SOPInstanceUID) and label 0/1, YES/NO or NIH Finding "
            "Labels."))),
        "report_dir": (_STRING, dict(default=None, help=(
            "Where metrics.json, roc.png and precision_recall.png go when labels are known "
            "(default: <output stem>_report beside --output)."))),
    }


def _computing() -> dict[str, tuple]:
    """How a tool computes: decisions, resamples, processes, batches, devices."""
    from evaluation import settings
    from pipeline import options
    from training.config import PRECISIONS, STRATEGIES

    return {
        "threshold": (_FLOAT, dict(default=None, lower_bound=0.0, upper_bound=1.0, help=(
            "Decision threshold: P(abnormal) >= it is called abnormal."))),
        "bootstrap": (_INTEGER, dict(default=settings.BOOTSTRAP, lower_bound=0, help=(
            "Bootstrap resamples behind the report's 95% intervals, each drawing patients with "
            "replacement with all their images (0: no intervals)."))),
        "workers": (_INTEGER, dict(default=None, lower_bound=1, help=(
            "Processes decoding images (default: every core). Never changes the output."))),
        "global_batch_size": (_INTEGER, dict(default=None, lower_bound=1, help=(
            "Images per step over all replicas (each replica gets an equal share)."))),
        "strategy": (_ENUM, dict(default="auto", enum_values=list(STRATEGIES), help=(
            "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs, else default."))),
        "precision": (_ENUM, dict(default="auto", enum_values=list(PRECISIONS), help=(
            "Dtype policy the models compute under; auto: mixed_float16 on GPU, float32 on CPU."))),
        "transfer": (_ENUM, dict(default=options.DEFAULT_TRANSFER, enum_values=list(options.TRANSFERS), help=(
            f"What the input pipeline hands the device. {options.UINT8}: the decoded gray bytes (1 byte per "
            "pixel), made float32 RGB by the model's front on the device: 12x fewer bytes to copy and less "
            f"host CPU. {options.FLOAT32}: float32 RGB made on the host. auto: {options.UINT8} when TensorFlow "
            f"sees a GPU, else {options.CPU_TRANSFER} (measured; README, 'Performance on GPUs'). Saved and "
            "exported models take float32 RGB either way."))),
        "seed": (_INTEGER, dict(default=0, help="Seed of the tool's randomness: same seed, same output.")),
    }


def _data_and_training() -> dict[str, tuple]:
    """What the images are and how a backbone trains on them."""
    from preprocess.config import CROPS

    return {
        "image_size": (_INTEGER, dict(default=None, lower_bound=8, help="Side of the square images, in pixels.")),
        "crop": (_ENUM, dict(default=None, enum_values=list(CROPS), help=(
            "bbox: crop images that have boxes to the union of their boxes (the reference; beware the "
            "shortcut: only abnormal images have boxes); none: never crop."))),
        "num_patients": (_INTEGER, dict(default=None, lower_bound=1, help="Synthetic patients to generate.")),
        "source_size": (_INTEGER, dict(default=None, lower_bound=16, help=(
            "Side of the synthetic source PNGs (boxes stay in the 1024 frame, as in NIH)."))),
        "weights": (_STRING, dict(default=None, help=(
            "Initial backbone weights: imagenet (downloaded, or from the Keras cache ~/.keras/models), none "
            "(random) or the path of a local weights file for the backbone without its top."))),
        "epochs": (_INTEGER, dict(default=None, lower_bound=1, help="Training epochs.")),
        "learning_rate": (_FLOAT, dict(default=None, lower_bound=0.0, help="Initial learning rate.")),
        "batchnorm_momentum": (_FLOAT, dict(default=None, lower_bound=0.0, upper_bound=0.999, help=(
            "Momentum of every BatchNormalization's moving statistics (default: the backbone's 0.99). "
            "Lower it (e.g. 0.9) for short runs from scratch, whose inference statistics otherwise lag."))),
    }


@functools.cache
def specs() -> dict[str, tuple]:
    """Every shared flag name -> (absl definer, its keyword arguments: default, help, bounds, choices)."""
    return {**_inputs_and_outputs(), **_computing(), **_data_and_training()}
