"""Every command-line flag of every entry point. Import it as `project_flags`; absl's module is `flags`.

Each entry point calls its own `define_*_flags()` once before `app.run(main)`, so importing a
library module never registers a flag, a name may mean different things in two tools, and a
name defined twice in one tool raises (absl's DuplicateFlagError). Defaults and closed sets come
from the modules that own them (the backbone registry, `BuildConfig`, `TrainConfig`,
`evaluation.settings`, `pipeline.options`), all importable without TensorFlow, so `--help` is
fast. Values are read only inside `main()`. Tests pass their own `flags.FlagValues()`.
"""

from __future__ import annotations

import dataclasses

from absl import flags

import tool_runner


def _d(define, fv: flags.FlagValues):
    """Returns `define` bound to the tool's FlagValues."""
    return lambda *args, **kwargs: define(*args, flag_values=fv, **kwargs)


def backbones() -> list[str]:
    """The --backbone choices: the registry's user-facing entries, in registry order."""
    from models import registry

    return list(registry.BACKBONES)


def define_build_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `preprocess/build_tfrecords.py`: one per `preprocess.config.BuildConfig` field."""
    from preprocess.config import CROPS, DEFAULT_TEST_FRACTION, IMAGE_FORMATS, RUNNERS, SPLITS, BuildConfig

    default = {f.name: f.default for f in dataclasses.fields(BuildConfig)}
    _d(flags.DEFINE_string, fv)("data_entry_csv", None,
      "NIH Data_Entry_2017*.csv (plain or .gz, v2017 or v2020 dialect). Not used with --split=unlabeled.")
    _d(flags.DEFINE_string, fv)("bbox_csv", None,
      "Optional NIH BBox_List_2017.csv (boxes in the 1024 frame).")
    _d(flags.DEFINE_string, fv)("labels_csv", None,
      "With --split=unlabeled: a CSV labelling some of the images, keyed by image_id (file name, or "
      "a DICOM file's path under --image_dir), Image Index or SOPInstanceUID, with a 0/1 'label' or "
      "NIH 'Finding Labels' column. Images it does not name stay unlabeled (-1).")
    _d(flags.DEFINE_string, fv)("image_dir", None,
      "Folder searched recursively for the images (the download's images_0NN/images/ layout works; "
      "linked folders are followed). PNG and JPEG by extension, DICOM by content. With "
      "--split=unlabeled also a quoted glob pattern of files, e.g. '/data/**/*.dcm'.")
    _d(flags.DEFINE_string, fv)("output_dir", None, "Where shards, manifest.json and absent.txt go.")
    _d(flags.DEFINE_enum, fv)("split", default["split"], list(SPLITS),
      "grouped: train/val(/test) by patient, stratified by label; official: the NIH lists; "
      "all: one split 'all'; unlabeled: every image under --image_dir as split 'eval', label -1.")
    _d(flags.DEFINE_float, fv)("val_fraction", default["val_fraction"],
      "Share of records in val (grouped; official: of train_val).")
    _d(flags.DEFINE_float, fv)("test_fraction", default["test_fraction"],
      "Share of records in test (grouped only). Default: "
      + ", ".join(f"{value:g} for --split={split}" for split, value in DEFAULT_TEST_FRACTION.items()) + ", else 0.")
    _d(flags.DEFINE_string, fv)("train_val_list", None, "NIH train_val_list.txt (--split=official).")
    _d(flags.DEFINE_string, fv)("test_list", None, "NIH test_list.txt (--split=official).")
    _d(flags.DEFINE_enum, fv)("crop", default["crop"], list(CROPS),
      "none: never crop. bbox: crop images that have boxes to the union of their boxes (the reference "
      "project's mode; it teaches a shortcut, as only abnormal NIH images have boxes: README, 'Pitfalls').")
    _d(flags.DEFINE_integer, fv)("image_size", default["image_size"], "Side of the stored square images.",
                                lower_bound=8)
    _d(flags.DEFINE_enum, fv)("image_format", default["image_format"], list(IMAGE_FORMATS),
      "Stored encoding of the one grayscale channel: png (lossless) or jpeg (smaller, faster to decode).")
    _d(flags.DEFINE_integer, fv)("jpeg_quality", default["jpeg_quality"],
      "JPEG quality with --image_format=jpeg.",
      lower_bound=1, upper_bound=100)
    _d(flags.DEFINE_integer, fv)("num_shards", None,
      "Shards of the largest split (others proportional, at least 1). Default: ~128 MB shards, "
      "at least 16 when the split has that many records.", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("workers", None,
      "Worker processes (default: all cores). Never changes the output.",
      lower_bound=1)
    _d(flags.DEFINE_integer, fv)("seed", default["seed"], "Seed of the split and of the record order.")
    _d(flags.DEFINE_float, fv)("max_skip_fraction", default["max_skip_fraction"],
      "Exit 1 when skipped / (CSV rows whose file is present) exceeds this (good records are written anyway).",
      lower_bound=0.0, upper_bound=1.0)
    _d(flags.DEFINE_integer, fv)("max_image_pixels", default["max_image_pixels"],
      "Images with more pixels are refused as possible decompression bombs.", lower_bound=1)
    _d(flags.DEFINE_bool, fv)("overwrite", default["overwrite"],
      "Replace an existing build made with different record-shaping flags. Without it, a rerun in a "
      "built folder keeps that build's values for the flags it leaves out.")
    _d(flags.DEFINE_enum, fv)("runner", default["runner"], list(RUNNERS),
      "local: this machine's process pool (--workers); beam: Apache Beam (pip install -e '.[beam]'), "
      "on the runner --beam_pipeline_args names (DirectRunner by default; Dataflow, Flink, Spark). Same "
      "shards and manifest either way. --image_dir, --output_dir and the CSVs may be gs:// URLs.")
    _d(flags.DEFINE_string, fv)("beam_pipeline_args", default["beam_pipeline_args"],
      "With --runner=beam: Beam's pipeline options as one quoted string, e.g. "
      "\"--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp\" or "
      "\"--direct_num_workers=4 --direct_running_mode=multi_processing\".")


def define_synthetic_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `preprocess/synthetic.py` (the NIH-format synthetic dataset): `SyntheticConfig`'s fields."""
    from preprocess.synthetic import PRESETS, SyntheticConfig

    default = {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}
    _d(flags.DEFINE_string, fv)("output_dir", None, "Where the CSVs and images_001/images/*.png go.")
    _d(flags.DEFINE_enum, fv)("preset", default["preset"], list(PRESETS),
      "radiograph: varied anatomy, exposure, distractors and five finding kinds (the demo's data); "
      "easy: one anatomy and one bright lesion (data a tiny model learns in seconds).")
    _d(flags.DEFINE_float, fv)("label_noise", default["label_noise"],
      "Share of images whose written label is flipped, listed in label_noise.csv "
      f"(default: the preset's, {PRESETS}).", lower_bound=0.0, upper_bound=1.0)
    _d(flags.DEFINE_integer, fv)("num_patients", default["num_patients"],
      "Patients to generate.", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("max_images_per_patient", default["max_images_per_patient"],
      "Each patient gets 1..this many images.",
      lower_bound=1)
    _d(flags.DEFINE_integer, fv)("source_size", default["source_size"],
      "Side of the written PNGs (boxes stay in the 1024 frame, as in NIH).", lower_bound=16)
    _d(flags.DEFINE_float, fv)("abnormal_fraction", default["abnormal_fraction"],
      "Share of images with a finding (and a lesion).")
    _d(flags.DEFINE_float, fv)("bbox_fraction", default["bbox_fraction"],
      "Share of findings given a bbox row.")
    _d(flags.DEFINE_integer, fv)("seed", default["seed"], "Same seed, same files.")


def _define_report_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The report flags shared by `predict.py` and `ensemble.py`."""
    from evaluation import settings
    _d(flags.DEFINE_float, fv)("threshold", None,
      f"P(abnormal) >= threshold is called abnormal in the report (predict.py default "
      f"{settings.SINGLE_MODEL_THRESHOLD}; ensemble.py default {settings.ENSEMBLE_THRESHOLD}, or fitted with --fit_on).",
      lower_bound=0.0, upper_bound=1.0)
    _d(flags.DEFINE_string, fv)("report_dir", None,
      "Where metrics.json, roc.png and precision_recall.png go when labels are known "
      "(default: <output stem>_report beside --output).")
    _d(flags.DEFINE_integer, fv)("bootstrap", settings.BOOTSTRAP,
      "Bootstrap resamples behind the report's 95% intervals (0: none).",
      lower_bound=0)


def define_predict_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `predict.py`."""
    from contracts import output_names as files
    from evaluation import settings
    from training.config import PRECISIONS, STRATEGIES  # the one list of each

    _d(flags.DEFINE_multi_string, fv)("model_dir", None,
      "Folder written by train.py (model.keras + config.json). Repeat it to predict with several models "
      "in one call: each then writes <output stem>.<backbone>.csv/.npy/.json instead of --output itself "
      "(<output stem>.<backbone>.<model_dir name>.csv when two share a backbone).")
    _d(flags.DEFINE_string, fv)("data_dir", None, "Shard folder (holds manifest.json) to predict over.")
    _d(flags.DEFINE_string, fv)("split", None, "Split of --data_dir to predict, e.g. test, val or eval. "
      "Default: test when the folder has it, else its only split besides train.")
    _d(flags.DEFINE_string, fv)("images", None,
      "Instead of --data_dir: raw PNG, JPEG or DICOM files, a folder (searched recursively, DICOM "
      "found by content) or a quoted glob. They are decoded and resized by the builder's own code "
      "into a temporary shard folder that is removed afterwards; unreadable files are listed in "
      "the sidecar's 'skipped'. DICOM rows are keyed by their path under the folder.")
    _d(flags.DEFINE_string, fv)("ensemble", None,
      "ensemble.py's <submission>.probabilities.json: blend the --model_dir predictions with its "
      "weights into --output (members then go to <output stem>.<backbone>.csv); the sidecar holds "
      "its threshold. Pass exactly the ensemble's model folders.")
    _d(flags.DEFINE_integer, fv)("workers", None,
      "Decoding processes for --images (default: every core).", lower_bound=1)
    _d(flags.DEFINE_string, fv)("labels_csv", None,
      "With --images: known labels for some of the files, which the predictions then carry. With "
      "--data_dir: another reading of the split's images (e.g. a radiologist panel's), which the "
      "report rescores against, with Cohen's kappa against the records' own labels (other_labels.json). "
      "Columns: image_id (or Image Index or SOPInstanceUID) and label 0/1, YES/NO or NIH Finding Labels.")
    _d(flags.DEFINE_string, fv)("output", None,
      f"Prediction CSV ({files.ID},{files.PROB}[,{files.LABEL}],{files.PROB_UNCALIBRATED}: {files.PROB} after "
      f"the run's temperature, {files.PROB_UNCALIBRATED} the softmax output; with --ensemble, PATH.csv holds "
      f"the blend as {files.PROB}); PATH.npy ((N, 2) softmax, same rows) and the sidecar PATH.json "
      "(backbone, shards, crop, temperature) go beside it.")
    _d(flags.DEFINE_integer, fv)("batch_size", settings.PREDICT_BATCH_SIZE,
      "Global batch size (split over the replicas).", lower_bound=1)
    _d(flags.DEFINE_enum, fv)("strategy", "auto", list(STRATEGIES),
      "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs, else default.")
    _d(flags.DEFINE_enum, fv)("precision", "auto", list(PRECISIONS),
      "Dtype policy the models compute under (the saved graph is cloned under it when needed); "
      "auto: mixed_float16 on GPU, float32 on CPU.")
    _define_transfer_flag(fv)
    _define_report_flags(fv)


def define_ensemble_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `ensemble.py`."""
    from contracts import output_names as files
    from evaluation import settings
    from models import registry
    _d(flags.DEFINE_list, fv)("predictions", None,
      "Prediction CSVs to blend (predict.py's format), joined on image_id; their sidecars give the backbones.")
    _d(flags.DEFINE_string, fv)("output", None,
      "Submission CSV; <output stem>.probabilities.csv (+ .json: weights, threshold, inputs) go beside it.")
    _d(flags.DEFINE_list, fv)("weights", None,
      "One weight per --predictions file, normalised to sum 1. Default: fitted with --fit_on, else the "
      f"reference weights of the sidecars' backbones ({registry.describe('ensemble_weight')}).")
    _d(flags.DEFINE_list, fv)("fit_on", None,
      "Validation prediction files with labels (e.g. each run's val_predictions.csv), one per --predictions "
      "file in the same order: weights and/or threshold not given are chosen on them by balanced accuracy.")
    _d(flags.DEFINE_float, fv)("fit_step", settings.FIT_STEP,
      "Spacing of the weight grid searched with --fit_on (must divide 1).")
    _d(flags.DEFINE_string, fv)("submission_id_column", files.ID, "Submission column holding the image id.")
    _d(flags.DEFINE_string, fv)("submission_label_column", files.DECISION,
      "Submission column holding the 0/1 decision (the blend's p_abnormal >= threshold).")
    _d(flags.DEFINE_string, fv)("labels_csv", None,
      "Another reading of the same images (e.g. a radiologist panel's): the report rescores every model "
      "and the blend against it on the images both share, with Cohen's kappa against the files' own "
      "labels (other_labels.json). Columns: image_id and label 0/1 or YES/NO (or NIH Finding Labels).")
    _define_report_flags(fv)


def define_export_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `export.py`."""
    from evaluation import settings
    _d(flags.DEFINE_multi_string, fv)("model_dir", None,
      "Folder written by train.py (model.keras + config.json). Repeat it for an ensemble, with --ensemble.")
    _d(flags.DEFINE_string, fv)("ensemble", None,
      "The .probabilities.json that ensemble.py wrote beside its submission: members, weights, threshold. "
      "Required with several --model_dir; its members must be exactly those folders.")
    _d(flags.DEFINE_float, fv)("threshold", None,
      f"Decision threshold of a single exported model (default {settings.SINGLE_MODEL_THRESHOLD}); "
      "an ensemble takes the file's.", lower_bound=0.0, upper_bound=1.0)
    _d(flags.DEFINE_string, fv)("export_dir", None,
      "New (or empty) folder for the SavedModel and export.json.")


def define_explain_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `explain.py` (Grad-CAM maps and their localization score)."""
    from contracts import explanation_folder as folder
    from evaluation import settings
    _d(flags.DEFINE_multi_string, fv)("model_dir", None, "Folder written by train.py; repeat it with --ensemble.")
    _d(flags.DEFINE_string, fv)("ensemble", None,
      "ensemble.py's <submission>.probabilities.json (required with several --model_dir, exactly its members): "
      "maps are the weighted mean of the members' maps, the gallery is chosen at its threshold.")
    _d(flags.DEFINE_string, fv)("data_dir", None, "Shard folder (holds manifest.json) whose split is explained.")
    _d(flags.DEFINE_string, fv)("split", None, "Split of --data_dir to explain and score. "
      "Default: test when the folder has it, else its only split besides train.")
    _d(flags.DEFINE_string, fv)("images", None, "Instead of --data_dir: raw PNG, JPEG or DICOM files (a folder or "
      "a quoted glob), built as predict.py --images builds them; every readable file is explained.")
    _d(flags.DEFINE_list, fv)("image_ids", None, "Explain these images (group 'asked') instead of the most "
      "confident true positives, false positives and false negatives.")
    _d(flags.DEFINE_integer, fv)("per_group", settings.EXPLAIN_PER_GROUP, "Gallery images per group (tp, fp, fn), "
      f"most confident first, at the ensemble file's threshold, else {settings.SINGLE_MODEL_THRESHOLD}.", lower_bound=0)
    _d(flags.DEFINE_string, fv)("output_dir", None, f"Where the maps (.npy), overlays (.png), {folder.LOCALIZATION} "
      f"and the index {folder.INDEX} go.")
    _d(flags.DEFINE_integer, fv)("batch_size", settings.EXPLAIN_BATCH_SIZE, "Images per prediction and Grad-CAM "
      "step.", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("workers", None, "Decoding processes for --images (default: every core).",
      lower_bound=1)


def define_train_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `train.py`: one per `training.config.TrainConfig` field, plus --model_dir."""
    from models import registry
    from training.config import CLASS_WEIGHTS, PRECISIONS, STRATEGIES, TrainConfig

    define_input_flags(fv)  # --shuffle_buffer, --cache, --deterministic, --augment
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    _d(flags.DEFINE_enum, fv)("backbone", None, backbones(), "Model to train (models/registry.py).")
    _d(flags.DEFINE_string, fv)("data_dir", None,
      "Shard folder written by build_tfrecords.py (holds manifest.json).")
    _d(flags.DEFINE_string, fv)("model_dir", None,
      "Output folder: config.json, metrics.jsonl, tensorboard/, checkpoints/, model.keras, "
      "val_predictions.csv (contracts/run_folder.py). Rerunning the same command there resumes after the "
      "last finished epoch.")
    _d(flags.DEFINE_string, fv)("train_split", default["train_split"], "Split of --data_dir to train on.")
    _d(flags.DEFINE_string, fv)("val_split", default["val_split"], "Split of --data_dir to validate on.")
    _d(flags.DEFINE_integer, fv)("image_size", default["image_size"],
      "Input side; default and only valid value: the size the shards were built at.", lower_bound=8)
    _d(flags.DEFINE_string, fv)("weights", default["weights"],
      "imagenet (downloaded, or from the Keras cache ~/.keras/models), none (random) or the path of a "
      "local weights file for the backbone without its top.")
    _d(flags.DEFINE_enum, fv)("strategy", default["strategy"], list(STRATEGIES),
      "auto: multi_worker with a multi-worker TF_CONFIG, mirrored with several GPUs, else default.")
    _d(flags.DEFINE_enum, fv)("precision", default["precision"], list(PRECISIONS),
      "auto: mixed_float16 on GPU (with loss scaling), float32 on CPU.")
    _d(flags.DEFINE_bool, fv)("jit_compile", default["jit_compile"],
      "Compile the forward and backward pass with XLA.")
    _d(flags.DEFINE_integer, fv)("global_batch_size", default["global_batch_size"],
      "Images per step over all replicas (each replica gets an equal share).", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("epochs", default["epochs"],
      f"Default: the backbone's reference ({registry.describe('epochs')}).", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("steps_per_epoch", default["steps_per_epoch"],
      "Default: one pass over the train split (records // global batch).", lower_bound=1)
    _d(flags.DEFINE_float, fv)("learning_rate", default["learning_rate"],
      f"Default: the backbone's reference ({registry.describe('learning_rate', '{:g}')}).", lower_bound=0.0)
    _d(flags.DEFINE_enum, fv)("class_weight", default["class_weight"], list(CLASS_WEIGHTS),
      "balanced: weight each class's loss by records / (2 * class records) of the train split.")
    _d(flags.DEFINE_bool, fv)("validation", default["validation"],
      "Score the val split after every epoch (drives early stopping, LR reduction and model.keras).")
    _d(flags.DEFINE_integer, fv)("seed", default["seed"],
      "Seed of initial weights, dropout, augmentation and shuffling.")
    _d(flags.DEFINE_integer, fv)("early_stopping_patience", default["early_stopping_patience"],
      "Epochs without a better val AUROC before stopping.", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("reduce_lr_patience", default["reduce_lr_patience"],
      "Epochs without a lower val loss before multiplying the LR by --reduce_lr_factor.", lower_bound=1)
    _d(flags.DEFINE_float, fv)("reduce_lr_factor", default["reduce_lr_factor"], "LR multiplier on a plateau.",
      lower_bound=0.0, upper_bound=1.0)
    _d(flags.DEFINE_float, fv)("min_learning_rate", default["min_learning_rate"],
      "Floor of the LR reductions.",
      lower_bound=0.0)
    _d(flags.DEFINE_float, fv)("batchnorm_momentum", default["batchnorm_momentum"],
      "Momentum of every BatchNormalization's moving statistics (default: the backbone's 0.99). "
      "Lower it (e.g. 0.9) for short runs from scratch, whose inference statistics otherwise lag.",
      lower_bound=0.0, upper_bound=0.999)
    _d(flags.DEFINE_string, fv)("feature_layer", default["feature_layer"],
      "Cut the backbone at this layer: its output feeds the head. Default: the whole backbone. "
      f"'{registry.FEATURE_LAYER_FROM_SCRATCH}': the layer that learns from random weights in a CPU budget "
      "(" + ", ".join(f"{name} {spec.from_scratch_feature_layer}" for name, spec in registry.BACKBONES.items()
                      if spec.from_scratch_feature_layer) + "; the others keep the whole backbone), for short "
      "runs from scratch at small image sizes.")
    _d(flags.DEFINE_integer, fv)("keep_checkpoints", default["keep_checkpoints"],
      "Checkpoints kept in --model_dir/checkpoints.", lower_bound=1)


def define_demo_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `demo.py` (`make demo`)."""
    from models import registry
    from preprocess.config import CROPS, BuildConfig
    _d(flags.DEFINE_string, fv)("data_dir", None,
      "A real NIH ChestX-ray14 download (Data_Entry CSV, BBox_List_2017.csv, split lists and "
      "images_0NN/images/). Default: generate a synthetic NIH-format dataset.")
    _d(flags.DEFINE_string, fv)("output_dir", None,
      "Everything the demo writes: data/, shards/, models/, predictions/, submission.csv, report/, served/. "
      "Default: runs/demo for the synthetic data, runs/demo-<--data_dir's folder name> for real data, so "
      "each data set keeps its own runs.")
    _d(flags.DEFINE_integer, fv)("num_patients", 300, "Synthetic patients (1-5 images each).", lower_bound=10)
    _d(flags.DEFINE_integer, fv)("source_size", 512, "Side of the synthetic source PNGs.", lower_bound=64)
    _d(flags.DEFINE_integer, fv)("image_size", None,
      "Stored and trained image side (default: 64 synthetic, 224 real).",
      lower_bound=32)
    _d(flags.DEFINE_enum, fv)("crop", BuildConfig.crop, list(CROPS),
      "Crop mode of the build (preprocess/build_tfrecords.py --crop; bbox teaches a shortcut, as only "
      "abnormal images have boxes).")
    _d(flags.DEFINE_string, fv)("weights", None, "Backbone weights (default: none synthetic, imagenet real).")
    _d(flags.DEFINE_integer, fv)("epochs", None,
      "Epochs per backbone (default: 8 synthetic, the reference's real).",
      lower_bound=1)
    _d(flags.DEFINE_float, fv)("learning_rate", None,
      f"Learning rate of every backbone (default synthetic: {registry.describe('from_scratch_learning_rate', '{:g}')}; "
      "real: the reference's).")
    _d(flags.DEFINE_float, fv)("batchnorm_momentum", None,
      "BatchNorm momentum passed to train.py (default: 0.9 synthetic, the backbone's own real).")
    _d(flags.DEFINE_integer, fv)("global_batch_size", 16, "Training batch size.", lower_bound=1)
    _d(flags.DEFINE_list, fv)("backbones", backbones(), f"Backbones to train, of {', '.join(backbones())}.")


def define_data_service_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `data_service.py` (a tf.data service dispatcher or worker)."""
    from pipeline import options

    _d(flags.DEFINE_enum, fv)("role", None, list(options.SERVICE_ROLES),
      "dispatcher: the one server trainers name in train.py --data_service; worker: runs the input "
      "pipeline for them (start one or more per CPU host).")
    _d(flags.DEFINE_integer, fv)("port", None, f"Port to listen on (default: {options.DISPATCHER_PORT} for the "
      f"dispatcher, {options.WORKER_PORT} for a worker; 0: any free port).", lower_bound=0, upper_bound=65535)
    _d(flags.DEFINE_string, fv)("dispatcher", None, "--role=worker: the dispatcher's [grpc://]HOST:PORT.")
    _d(flags.DEFINE_string, fv)("worker_address", None,
      "--role=worker: HOST:PORT the trainers reach this worker at (default: this host's name, "
      "socket.getfqdn(), and --port). Use localhost only when the trainers run on this host.")


def define_input_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of the tf.data input pipeline and of the in-model augmentation (`pipeline/`)."""
    from pipeline import options
    from training.config import TrainConfig

    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    _d(flags.DEFINE_integer, fv)("shuffle_buffer", default["shuffle_buffer"],
      "Serialized training records in the shuffle buffer (~22 KB each at 224x224 PNG).", lower_bound=1)
    _d(flags.DEFINE_bool, fv)("cache", default["cache"],
      "Keep decoded grayscale images in RAM after the first epoch (~50 KB per 224x224 image, "
      "~5.6 GB for all of NIH).")
    _d(flags.DEFINE_bool, fv)("deterministic", default["deterministic"],
      "Same seed, same input order, batch for batch (batches can no longer overtake each other).")
    _d(flags.DEFINE_enum, fv)("augment", default["augment"], list(options.AUGMENT_MODES),
      "In-model training augmentation (rotation 10 deg, shifts 10%, shear 10 deg, zoom 10%): "
      "auto = the backbone's default (on for EfficientNet and DenseNet, off for ResNet).")
    _d(flags.DEFINE_string, fv)("data_service", default["data_service"],
      "grpc://HOST:PORT of a tf.data service dispatcher (data_service.py): the training input (read, "
      "shuffle, decode, batch) runs on its workers; each pass gives every train record to exactly one "
      "trainer. Validation still reads the shards here. Not with --cache or --deterministic.")
    _define_transfer_flag(fv)


def _define_transfer_flag(fv: flags.FlagValues) -> None:
    """--transfer, shared by train.py and predict.py (`pipeline.options` owns the choices)."""
    from pipeline import options

    _d(flags.DEFINE_enum, fv)("transfer", options.DEFAULT_TRANSFER, list(options.TRANSFERS),
      f"What the input pipeline hands the device. {options.UINT8}: the decoded gray bytes (1 byte per "
      "pixel), made float32 RGB by the model's front on the device: 12x fewer bytes to copy and less "
      f"host CPU. {options.FLOAT32}: float32 RGB made on the host. auto: {options.UINT8} when TensorFlow "
      f"sees a GPU, else {options.CPU_TRANSFER} (measured; README, 'Performance on GPUs'). Saved and "
      "exported models take float32 RGB either way.")


# How a tool runs around these flags (--help, required flags, one-line errors) lives in
# tool_runner.py; every entry point calls it as project_flags.run_tool.
run_tool = tool_runner.run_tool
