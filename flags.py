"""Every command-line flag of every entry point, defined once.

Each entry point calls its `define_*_flags()` before `app.run(main)`, so importing a library
module never registers a flag. Values are read (`.value` / `FLAGS.x`) only inside `main()`.
Entry points get absl's `--flagfile`, `--helpfull` and `--helpshort` for free.
"""

from __future__ import annotations

import os

from absl import flags

BACKBONES = ("efficientnet_b3", "resnet50", "densenet121")


def _define_once(define, name, *args, **kwargs):
    # Several entry points share a definer (e.g. the demo runs them all in one process).
    if name not in flags.FLAGS:
        define(name, *args, **kwargs)


def define_build_flags() -> None:
    """Flags of `preprocess/build_tfrecords.py`."""
    d = _define_once
    d(flags.DEFINE_string, "data_entry_csv", None,
      "NIH Data_Entry_2017*.csv (plain or .gz, v2017 or v2020 dialect). Not used with --split=unlabeled.")
    d(flags.DEFINE_string, "bbox_csv", None, "Optional NIH BBox_List_2017.csv (boxes in the 1024 frame).")
    d(flags.DEFINE_string, "image_dir", None,
      "Folder searched recursively for the images (the download's images_0NN/images/ layout works).")
    d(flags.DEFINE_string, "output_dir", None, "Where shards, manifest.json and absent.txt go.")
    d(flags.DEFINE_enum, "split", "grouped", ["grouped", "official", "all", "unlabeled"],
      "grouped: train/val(/test) by patient, stratified by label; official: the NIH lists; "
      "all: one split 'all'; unlabeled: every image under --image_dir as split 'eval', label -1.")
    d(flags.DEFINE_float, "val_fraction", 0.2, "Share of records in val (grouped; official: of train_val).")
    d(flags.DEFINE_float, "test_fraction", 0.0, "Share of records in test (grouped only).")
    d(flags.DEFINE_string, "train_val_list", None, "NIH train_val_list.txt (--split=official).")
    d(flags.DEFINE_string, "test_list", None, "NIH test_list.txt (--split=official).")
    d(flags.DEFINE_enum, "crop", "bbox", ["bbox", "none"],
      "bbox: crop images that have boxes to the union of their boxes (the reference; beware the "
      "shortcut: only abnormal images have boxes); none: never crop.")
    d(flags.DEFINE_integer, "image_size", 224, "Side of the stored square images.", lower_bound=8)
    d(flags.DEFINE_enum, "image_format", "png", ["png", "jpeg"],
      "Stored encoding of the one grayscale channel: png (lossless) or jpeg (smaller, faster to decode).")
    d(flags.DEFINE_integer, "jpeg_quality", 95, "JPEG quality with --image_format=jpeg.",
      lower_bound=1, upper_bound=100)
    d(flags.DEFINE_integer, "num_shards", None,
      "Shards of the largest split (others proportional, at least 1). Default: ~128 MB shards, "
      "at least 16 when the split has that many records.", lower_bound=1)
    d(flags.DEFINE_integer, "workers", None, "Worker processes (default: all cores). Never changes the output.",
      lower_bound=1)
    d(flags.DEFINE_integer, "seed", 0, "Seed of the split and of the record order.")
    d(flags.DEFINE_float, "max_skip_fraction", 0.01,
      "Exit 1 when skipped / (CSV rows whose file is present) exceeds this (good records are written anyway).")
    d(flags.DEFINE_integer, "max_image_pixels", 64_000_000,
      "Images with more pixels are refused as possible decompression bombs.", lower_bound=1)
    d(flags.DEFINE_bool, "overwrite", False,
      "Replace an existing build made with different record-shaping flags.")


def define_synthetic_flags() -> None:
    """Flags of `preprocess/synthetic.py` (the NIH-format synthetic dataset)."""
    d = _define_once
    d(flags.DEFINE_string, "output_dir", None, "Where the CSVs and images_001/images/*.png go.")
    d(flags.DEFINE_integer, "num_patients", 120, "Patients to generate.", lower_bound=1)
    d(flags.DEFINE_integer, "max_images_per_patient", 5, "Each patient gets 1..this many images.",
      lower_bound=1)
    d(flags.DEFINE_integer, "source_size", 1024,
      "Side of the written PNGs (boxes stay in the 1024 frame, as in NIH).", lower_bound=16)
    d(flags.DEFINE_float, "abnormal_fraction", 0.5, "Share of images with a finding (and a lesion).")
    d(flags.DEFINE_float, "bbox_fraction", 0.3, "Share of abnormal images given a bbox row.")
    d(flags.DEFINE_integer, "seed", 0, "Same seed, same files.")


def _define_report_flags() -> None:
    """The report flags shared by `predict.py` and `ensemble.py`."""
    d = _define_once
    d(flags.DEFINE_float, "threshold", None,
      "P(abnormal) >= threshold is called abnormal in the report (predict.py default 0.5; "
      "ensemble.py default 0.6, or fitted with --fit_on).", lower_bound=0.0, upper_bound=1.0)
    d(flags.DEFINE_string, "report_dir", None,
      "Where metrics.json, roc.png and precision_recall.png go when labels are known "
      "(default: <output stem>_report beside --output).")
    d(flags.DEFINE_integer, "bootstrap", 1000, "Bootstrap resamples behind the report's 95% intervals (0: none).",
      lower_bound=0)


def define_predict_flags() -> None:
    """Flags of `predict.py`."""
    from training.distribute import PRECISIONS, STRATEGIES  # the one list of each

    d = _define_once
    d(flags.DEFINE_multi_string, "model_dir", None,
      "Folder written by train.py (model.keras + config.json). Repeat it to predict with several models "
      "in one call: each then writes <output stem>.<backbone>.csv/.npy/.json instead of --output itself "
      "(<output stem>.<backbone>.<model_dir name>.csv when two share a backbone).")
    d(flags.DEFINE_string, "data_dir", None, "Shard folder (holds manifest.json) to predict over.")
    d(flags.DEFINE_string, "split", "eval", "Split of --data_dir to predict, e.g. eval, test or val.")
    d(flags.DEFINE_string, "output", None,
      "Prediction CSV (image_id,p_abnormal[,label]); PATH.npy ((N, 2) softmax, same rows) and the "
      "sidecar PATH.json (backbone, shards, crop) go beside it.")
    d(flags.DEFINE_integer, "batch_size", 64, "Global batch size (split over the replicas).", lower_bound=1)
    d(flags.DEFINE_enum, "strategy", "auto", list(STRATEGIES),
      "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs, else default.")
    d(flags.DEFINE_enum, "precision", "auto", list(PRECISIONS),
      "Dtype policy the models compute under (the saved weights are rebuilt under it when needed); "
      "auto: mixed_float16 on GPU, float32 on CPU.")
    _define_report_flags()


def define_ensemble_flags() -> None:
    """Flags of `ensemble.py`."""
    d = _define_once
    d(flags.DEFINE_list, "predictions", None,
      "Prediction CSVs to blend (predict.py's format), joined on image_id; their sidecars give the backbones.")
    d(flags.DEFINE_string, "output", None,
      "Submission CSV; <output stem>.probabilities.csv (+ .json: weights, threshold, inputs) go beside it.")
    d(flags.DEFINE_list, "weights", None,
      "One weight per --predictions file, normalised to sum 1. Default: fitted with --fit_on, else the "
      "reference weights of the sidecars' backbones (efficientnet_b3 0.6, densenet121 0.3, resnet50 0.1).")
    d(flags.DEFINE_list, "fit_on", None,
      "Validation prediction files with labels (e.g. each run's val_predictions.csv), one per --predictions "
      "file in the same order: weights and/or threshold not given are chosen on them by balanced accuracy.")
    d(flags.DEFINE_float, "fit_step", 0.05, "Spacing of the weight grid searched with --fit_on (must divide 1).")
    d(flags.DEFINE_string, "submission_id_column", "image_id", "Submission column holding the image id.")
    d(flags.DEFINE_string, "submission_label_column", "label", "Submission column holding the 0/1 decision.")
    _define_report_flags()


def define_export_flags() -> None:
    """Flags of `export.py`."""
    d = _define_once
    d(flags.DEFINE_multi_string, "model_dir", None,
      "Folder written by train.py (model.keras + config.json). Repeat it for an ensemble, with --ensemble.")
    d(flags.DEFINE_string, "ensemble", None,
      "The .probabilities.json that ensemble.py wrote beside its submission: members, weights, threshold. "
      "Required with several --model_dir; its members must be exactly those folders.")
    d(flags.DEFINE_float, "threshold", None,
      "Decision threshold of a single exported model (default 0.5); an ensemble takes the file's.")
    d(flags.DEFINE_string, "export_dir", None, "New (or empty) folder for the SavedModel and export.json.")


def define_train_flags() -> None:
    """Flags of `train.py`: one per `training.config.TrainConfig` field, plus --model_dir."""
    import dataclasses

    from training.config import CLASS_WEIGHTS, TrainConfig  # the defaults, defined once
    from training.distribute import PRECISIONS, STRATEGIES

    define_input_flags()  # --shuffle_buffer, --cache, --deterministic, --augment
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    d = _define_once
    d(flags.DEFINE_enum, "backbone", None, list(BACKBONES), "Model to train (see models/registry.py).")
    d(flags.DEFINE_string, "data_dir", None,
      "Shard folder written by build_tfrecords.py (holds manifest.json).")
    d(flags.DEFINE_string, "model_dir", None,
      "Output folder: config.json, metrics.jsonl, tensorboard/, checkpoints/, model.keras, "
      "val_predictions.csv. Rerunning the same command there resumes after the last finished epoch.")
    d(flags.DEFINE_string, "train_split", default["train_split"], "Split of --data_dir to train on.")
    d(flags.DEFINE_string, "val_split", default["val_split"], "Split of --data_dir to validate on.")
    d(flags.DEFINE_integer, "image_size", default["image_size"],
      "Input side; default and only valid value: the size the shards were built at.", lower_bound=8)
    d(flags.DEFINE_string, "weights", default["weights"],
      "imagenet (downloaded, or from the Keras cache ~/.keras/models), none (random) or the path of a "
      "local weights file for the backbone without its top.")
    d(flags.DEFINE_enum, "strategy", default["strategy"], list(STRATEGIES),
      "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs, else default.")
    d(flags.DEFINE_enum, "precision", default["precision"], list(PRECISIONS),
      "auto: mixed_float16 on GPU (with loss scaling), float32 on CPU.")
    d(flags.DEFINE_bool, "jit_compile", default["jit_compile"],
      "Compile the forward and backward pass with XLA.")
    d(flags.DEFINE_integer, "global_batch_size", default["global_batch_size"],
      "Images per step over all replicas (each replica gets an equal share).", lower_bound=1)
    d(flags.DEFINE_integer, "epochs", default["epochs"],
      "Default: the backbone's reference (efficientnet_b3 10, resnet50 5, densenet121 10).", lower_bound=1)
    d(flags.DEFINE_integer, "steps_per_epoch", default["steps_per_epoch"],
      "Default: one pass over the train split (records // global batch).", lower_bound=1)
    d(flags.DEFINE_float, "learning_rate", default["learning_rate"],
      "Default: the backbone's reference (Adam 1e-4; SGD 1e-3 for resnet50).", lower_bound=0.0)
    d(flags.DEFINE_enum, "class_weight", default["class_weight"], list(CLASS_WEIGHTS),
      "balanced: weight each class's loss by records / (2 * class records) of the train split.")
    d(flags.DEFINE_bool, "validation", default["validation"],
      "Score the val split after every epoch (drives early stopping, LR reduction and model.keras).")
    d(flags.DEFINE_integer, "seed", default["seed"],
      "Seed of initial weights, dropout, augmentation and shuffling.")
    d(flags.DEFINE_integer, "early_stopping_patience", default["early_stopping_patience"],
      "Epochs without a better val AUROC before stopping.", lower_bound=1)
    d(flags.DEFINE_integer, "reduce_lr_patience", default["reduce_lr_patience"],
      "Epochs without a lower val loss before multiplying the LR by --reduce_lr_factor.", lower_bound=1)
    d(flags.DEFINE_float, "reduce_lr_factor", default["reduce_lr_factor"], "LR multiplier on a plateau.",
      lower_bound=0.0, upper_bound=1.0)
    d(flags.DEFINE_float, "min_learning_rate", default["min_learning_rate"], "Floor of the LR reductions.",
      lower_bound=0.0)
    d(flags.DEFINE_float, "batchnorm_momentum", default["batchnorm_momentum"],
      "Momentum of every BatchNormalization's moving statistics (default: the backbone's 0.99). "
      "Lower it (e.g. 0.9) for short runs from scratch, whose inference statistics otherwise lag.",
      lower_bound=0.0, upper_bound=0.999)
    d(flags.DEFINE_integer, "keep_checkpoints", default["keep_checkpoints"],
      "Checkpoints kept in --model_dir/checkpoints.", lower_bound=1)


def define_demo_flags() -> None:
    """Flags of `demo.py` (`make demo`)."""
    d = _define_once
    d(flags.DEFINE_string, "data_dir", None,
      "A real NIH ChestX-ray14 download (Data_Entry CSV, BBox_List_2017.csv, split lists and "
      "images_0NN/images/). Default: generate a synthetic NIH-format dataset.")
    d(flags.DEFINE_string, "output_dir", os.path.join("runs", "demo"),
      "Everything the demo writes: data/, shards/, models/, predictions/, submission.csv, report/.")
    d(flags.DEFINE_integer, "num_patients", 300, "Synthetic patients (1-5 images each).", lower_bound=10)
    d(flags.DEFINE_integer, "source_size", 512, "Side of the synthetic source PNGs.", lower_bound=64)
    d(flags.DEFINE_integer, "image_size", None, "Stored and trained image side (default: 64 synthetic, 224 real).",
      lower_bound=32)
    d(flags.DEFINE_enum, "crop", "none", ["bbox", "none"],
      "Crop mode of the build; none by default, because only abnormal images have boxes.")
    d(flags.DEFINE_string, "weights", None, "Backbone weights (default: none synthetic, imagenet real).")
    d(flags.DEFINE_integer, "epochs", None, "Epochs per backbone (default: 8 synthetic, the reference's real).",
      lower_bound=1)
    d(flags.DEFINE_float, "learning_rate", None,
      "Learning rate of every backbone (default synthetic: Adam 1e-3, SGD 1e-2 for resnet50; "
      "real: the reference's).")
    d(flags.DEFINE_float, "batchnorm_momentum", None,
      "BatchNorm momentum passed to train.py (default: 0.9 synthetic, the backbone's own real).")
    d(flags.DEFINE_integer, "global_batch_size", 16, "Training batch size.", lower_bound=1)
    d(flags.DEFINE_list, "backbones", ["efficientnet_b3", "densenet121", "resnet50"], "Backbones to train.")


def define_input_flags() -> None:
    """Flags of the tf.data input pipeline and of the in-model augmentation (`pipeline/`)."""
    d = _define_once
    d(flags.DEFINE_integer, "shuffle_buffer", 2048,
      "Serialized training records in the shuffle buffer (~22 KB each at 224x224 PNG).", lower_bound=1)
    d(flags.DEFINE_bool, "cache", False,
      "Keep decoded grayscale images in RAM after the first epoch (~50 KB per 224x224 image, "
      "~5.6 GB for all of NIH).")
    d(flags.DEFINE_bool, "deterministic", False,
      "Same seed, same input order, batch for batch (batches can no longer overtake each other).")
    d(flags.DEFINE_enum, "augment", "auto", ["auto", "on", "off"],
      "In-model training augmentation (rotation 10 deg, shifts 10%, shear 10 deg, zoom 10%): "
      "auto = the backbone's default (on for EfficientNet and DenseNet, off for ResNet).")
