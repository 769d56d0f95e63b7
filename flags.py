"""Every command-line flag of every entry point. Import it as `project_flags`; absl's module is `flags`.

Each entry point calls its own `define_*_flags()` once before `app.run(main)`, so importing a
library module never registers a flag. One name means one thing in every tool: a name that several
tools take is defined once, in `shared_flags.py`, and each tool defines it through `share` (a tool
may pass its own default and a note on what the value does there); `RENAMED` lists the names that
used to mean something else, which fail in one line naming the new one. Defaults and closed sets
come from the modules that own them (the backbone registry, `BuildConfig`, `TrainConfig`,
`evaluation.settings`, `pipeline.options`), all importable without TensorFlow, so `--help` is
fast. Values are read only inside `main()`. Tests pass their own `flags.FlagValues()`.
"""

from __future__ import annotations

import dataclasses

from absl import flags

import shared_flags
import tool_runner


def _d(define, fv: flags.FlagValues):
    """Returns `define` bound to the tool's FlagValues."""
    return lambda *args, **kwargs: define(*args, flag_values=fv, **kwargs)


def backbones() -> list[str]:
    """The --backbone choices: the registry's user-facing entries, in registry order."""
    from models import registry

    return list(registry.BACKBONES)


_NO_DEFAULT = object()


def share(fv: flags.FlagValues, name: str, default=_NO_DEFAULT, note: str = "", repeated: bool = True,
          **bounds) -> None:
    """Defines the shared flag `name` in `fv`: its one meaning, with this tool's default and note.

    Args:
      default: this tool's default (the meaning's own when not given).
      note: what the value does in this tool, appended to the shared help.
      repeated: False gives a repeated flag's single-valued form (train.py writes one --model_dir).
      bounds: this tool's tighter lower_bound / upper_bound.
    """
    define, spec = shared_flags.specs()[name]
    spec = {**spec, **bounds}
    if default is not _NO_DEFAULT:
        spec["default"] = default
    if note:
        spec["help"] = f"{spec['help']} {note}"
    if define is flags.DEFINE_multi_string and not repeated:
        define = flags.DEFINE_string
    define(name=name, flag_values=fv, **spec)


def define_build_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `preprocess/build_tfrecords.py`: one per `preprocess.config.BuildConfig` field."""
    from preprocess.config import DEFAULT_TEST_FRACTION, IMAGE_FORMATS, RUNNERS, SPLITS, BuildConfig

    default = {f.name: f.default for f in dataclasses.fields(BuildConfig)}
    _d(flags.DEFINE_string, fv)("data_entry_csv", None,
      "NIH Data_Entry_2017*.csv (plain or .gz, v2017 or v2020 dialect). Not used with --split_by=unlabeled.")
    _d(flags.DEFINE_string, fv)("bbox_csv", None,
      "Optional NIH BBox_List_2017.csv (boxes in the 1024 frame).")
    share(fv, "labels_csv", note="With --split_by=unlabeled only (the other modes take labels from --data_entry_csv).")
    _d(flags.DEFINE_string, fv)("image_dir", None,
      "Folder searched recursively for the images (the download's images_0NN/images/ layout works; "
      "linked folders are followed). PNG and JPEG by extension, DICOM by content. With "
      "--split_by=unlabeled also a quoted glob pattern of files, e.g. '/data/**/*.dcm'.")
    share(fv, "output_dir", note="Here: the shards, manifest.json and absent.txt.")
    _d(flags.DEFINE_enum, fv)("split_by", default["split_by"], list(SPLITS),
      "How records are split: grouped: train/val(/test) by patient, stratified by label; official: the "
      "NIH lists; all: one split 'all'; unlabeled: every image under --image_dir as split 'eval', label -1.")
    _d(flags.DEFINE_float, fv)("val_fraction", default["val_fraction"],
      "Share of records in val (grouped; official: of train_val).")
    _d(flags.DEFINE_float, fv)("test_fraction", default["test_fraction"],
      "Share of records in test (grouped only). Default: "
      + ", ".join(f"{value:g} for --split_by={split}" for split, value in DEFAULT_TEST_FRACTION.items()) + ", else 0.")
    _d(flags.DEFINE_string, fv)("train_val_list", None, "NIH train_val_list.txt (--split_by=official).")
    _d(flags.DEFINE_string, fv)("test_list", None, "NIH test_list.txt (--split_by=official).")
    share(fv, "crop", default["crop"], "Here: none by default; bbox is the reference project's mode (README, "
          "'Pitfalls'), and a build that crops says so.")
    share(fv, "image_size", default["image_size"], "Here: the side of the stored images.")
    _d(flags.DEFINE_enum, fv)("image_format", default["image_format"], list(IMAGE_FORMATS),
      "Stored encoding of the one grayscale channel: png (lossless) or jpeg (smaller, faster to decode).")
    _d(flags.DEFINE_integer, fv)("jpeg_quality", default["jpeg_quality"],
      "JPEG quality with --image_format=jpeg.",
      lower_bound=1, upper_bound=100)
    _d(flags.DEFINE_integer, fv)("num_shards", None,
      "Shards of the largest split (others proportional, at least 1). Default: ~128 MB shards, "
      "at least 16 when the split has that many records.", lower_bound=1)
    share(fv, "workers", default["workers"])
    share(fv, "seed", default["seed"], "Here: the split and the record order.")
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
    from preprocess.synthetic_data import PRESETS, SyntheticConfig

    default = {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}
    share(fv, "output_dir", note="Here: the CSVs and images_001/images/*.png.")
    _d(flags.DEFINE_enum, fv)("preset", default["preset"], list(PRESETS),
      "radiograph: varied anatomy, exposure, distractors and five finding kinds (the demo's data); "
      "easy: one anatomy and one bright lesion (data a tiny model learns in seconds).")
    _d(flags.DEFINE_float, fv)("label_noise", default["label_noise"],
      "Share of images whose written label is flipped, listed in label_noise.csv "
      f"(default: the preset's, {PRESETS}).", lower_bound=0.0, upper_bound=1.0)
    share(fv, "num_patients", default["num_patients"])
    _d(flags.DEFINE_integer, fv)("max_images_per_patient", default["max_images_per_patient"],
      "Each patient gets 1..this many images.",
      lower_bound=1)
    share(fv, "source_size", default["source_size"])
    _d(flags.DEFINE_float, fv)("abnormal_fraction", default["abnormal_fraction"],
      "Share of images with a finding (and a lesion).")
    _d(flags.DEFINE_float, fv)("bbox_fraction", default["bbox_fraction"],
      "Share of findings given a bbox row.")
    share(fv, "seed", default["seed"], "Here: the patients, images and labels.")


def _define_report_flags(fv: flags.FlagValues, threshold_note: str) -> None:
    """The report flags of `predict.py` and `ensemble.py`."""
    share(fv, "threshold", note=threshold_note)
    share(fv, "report_dir")
    share(fv, "bootstrap")
    share(fv, "other_labels_csv")


def define_predict_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `predict.py`."""
    from contracts import output_names as files
    from evaluation import settings

    share(fv, "model_dir", note="Repeat it to predict with several models in one call: each then writes "
          "<output stem>.<backbone>.csv/.npy/.json instead of --output itself (<output stem>.<backbone>.<model_dir "
          "name>.csv when two share a backbone).")
    share(fv, "data_dir", note="Here: the folder whose split is predicted.")
    share(fv, "split", None, "Default: test when the folder has it, else its only split besides train.")
    share(fv, "images", note="Unreadable files are listed in the sidecar's 'skipped'.")
    share(fv, "ensemble", note="Here: blend the --model_dir predictions with its temperatures and weights into "
          "--output (members then go to <output stem>.<backbone>.csv); the sidecar holds its threshold.")
    share(fv, "workers", note="Here: with --images.")
    share(fv, "labels_csv", note="With --images only: the predictions then carry them (to rescore a shard "
          "split against another reading, use --other_labels_csv).")
    share(fv, "output", note=(
          f"Here: the predictions ({files.ID},{files.PROB}[,{files.LABEL}],{files.PROB_UNCALIBRATED}, then the "
          f"patient columns: {files.PROB} after the run's temperature, {files.PROB_UNCALIBRATED} the softmax "
          f"output; with --ensemble, PATH.csv holds the blend as {files.PROB}); PATH.npy ((N, 2) softmax, same "
          "rows) and the sidecar PATH.json (backbone, shards, crop, temperature) go beside it."))
    share(fv, "global_batch_size", settings.PREDICT_BATCH_SIZE)
    share(fv, "strategy")
    share(fv, "precision", note="The saved graph is cloned under it when needed.")
    share(fv, "transfer")
    _define_report_flags(fv, f"Here: in the report (default {settings.SINGLE_MODEL_THRESHOLD}; with --ensemble "
                             "the blend takes the file's).")


def define_ensemble_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `ensemble.py`."""
    from contracts import output_names as files
    from evaluation import settings
    from models import registry

    _d(flags.DEFINE_multi_string, fv)("predictions", None,
      "A prediction CSV to blend (predict.py's format), one per model. The files are joined on image_id; "
      "their sidecars give the backbones.")
    share(fv, "output", note="Here: the submission; <output stem>.probabilities.csv (+ .json: weights, "
          "threshold, inputs) go beside it.")
    _d(flags.DEFINE_multi_string, fv)("blend_weight", None,
      "The weight of one --predictions file in the blend, one per --predictions, in their order "
      "(normalised to sum 1). Default: fitted with --fit_on, else the reference weights of the sidecars' "
      f"backbones ({registry.describe('ensemble_weight')}).")
    _d(flags.DEFINE_multi_string, fv)("fit_on", None,
      "A validation prediction file with labels (e.g. a run's val_predictions.csv), one per "
      "--predictions, in their order: the weights and/or threshold not given are chosen on them by "
      "balanced accuracy.")
    _d(flags.DEFINE_float, fv)("fit_step", settings.FIT_STEP,
      "Spacing of the weight grid searched with --fit_on (must divide 1).")
    _d(flags.DEFINE_string, fv)("submission_id_column", files.ID, "Submission column holding the image id.")
    _d(flags.DEFINE_string, fv)("submission_label_column", files.DECISION,
      "Submission column holding the 0/1 decision (the blend's p_abnormal >= threshold).")
    _define_report_flags(fv, f"Here: the submission's and the report's (default {settings.ENSEMBLE_THRESHOLD}, "
                             "or fitted with --fit_on).")


def define_export_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `export.py`."""
    from evaluation import settings

    share(fv, "model_dir", note="Repeat it for an ensemble, with --ensemble.")
    share(fv, "ensemble", note="Required with several --model_dir.")
    share(fv, "threshold", note=f"Here: the served label of a single model (default "
          f"{settings.SINGLE_MODEL_THRESHOLD}); an ensemble takes the file's.")
    _d(flags.DEFINE_string, fv)("export_dir", None,
      "New (or empty) folder for the SavedModel and export.json.")


def define_explain_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `explain.py` (Grad-CAM maps and their localization score)."""
    from contracts import explanation_folder as folder
    from evaluation import settings

    share(fv, "model_dir", note="Repeat it with --ensemble.")
    share(fv, "ensemble", note="Here: maps are the weighted mean of the members' maps, the gallery is chosen "
          "at its threshold.")
    share(fv, "data_dir", note="Here: the folder whose split is explained.")
    share(fv, "split", None, "Default: test when the folder has it, else its only split besides train.")
    share(fv, "images", note="Here: every readable file is explained.")
    _d(flags.DEFINE_multi_string, fv)("image_ids", None, "Explain this image (group 'asked') instead of the most "
      "confident true positives, false positives and false negatives, one per image.")
    _d(flags.DEFINE_integer, fv)("per_group", settings.EXPLAIN_PER_GROUP, "Gallery images per group (tp, fp, fn), "
      f"most confident first, at the ensemble file's threshold, else {settings.SINGLE_MODEL_THRESHOLD}.", lower_bound=0)
    share(fv, "output_dir", note=f"Here: the maps (.npy), overlays (.png), {folder.LOCALIZATION} and the index "
          f"{folder.INDEX}.")
    share(fv, "global_batch_size", settings.EXPLAIN_BATCH_SIZE, "Here: per prediction and Grad-CAM step, on "
          "one device.")
    share(fv, "workers", note="Here: with --images.")


def define_train_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `train.py`: one per `training.config.TrainConfig` field, plus --model_dir."""
    from models import registry
    from training.config import CLASS_WEIGHTS, TrainConfig

    define_input_flags(fv)  # --shuffle_buffer, --cache, --deterministic, --augment, --transfer
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    _d(flags.DEFINE_enum, fv)("backbone", None, backbones(), "Model to train (models/registry.py).")
    share(fv, "data_dir")
    share(fv, "model_dir", repeated=False, note="Here: the output folder (config.json, metrics.jsonl, "
          "tensorboard/, checkpoints/, model.keras, val_predictions.csv: contracts/run_folder.py). Rerunning "
          "the same command there resumes after the last finished epoch.")
    _d(flags.DEFINE_string, fv)("train_split", default["train_split"], "Split of --data_dir to train on.")
    _d(flags.DEFINE_string, fv)("val_split", default["val_split"], "Split of --data_dir to validate on.")
    share(fv, "image_size", default["image_size"], "Default and only valid value: the size the shards were "
          "built at.")
    share(fv, "weights", default["weights"])
    share(fv, "strategy", default["strategy"])
    share(fv, "precision", default["precision"], "Training under mixed_float16 scales the loss.")
    _d(flags.DEFINE_bool, fv)("jit_compile", default["jit_compile"],
      "Compile the forward and backward pass with XLA.")
    share(fv, "global_batch_size", default["global_batch_size"])
    share(fv, "epochs", default["epochs"], f"Default: the backbone's reference ({registry.describe('epochs')}).")
    _d(flags.DEFINE_integer, fv)("steps_per_epoch", default["steps_per_epoch"],
      "Default: one pass over the train split (records // global batch).", lower_bound=1)
    share(fv, "learning_rate", default["learning_rate"],
          f"Default: the backbone's reference ({registry.describe('learning_rate', '{:g}')}).")
    _d(flags.DEFINE_enum, fv)("class_weight", default["class_weight"], list(CLASS_WEIGHTS),
      "balanced: weight each class's loss by records / (2 * class records) of the train split.")
    _d(flags.DEFINE_bool, fv)("validation", default["validation"],
      "Score the val split after every epoch (drives early stopping, LR reduction and model.keras).")
    share(fv, "seed", default["seed"], "Here: initial weights, dropout, augmentation and shuffling.")
    _d(flags.DEFINE_integer, fv)("early_stopping_patience", default["early_stopping_patience"],
      "Epochs without a better val AUROC before stopping.", lower_bound=1)
    _d(flags.DEFINE_integer, fv)("reduce_lr_patience", default["reduce_lr_patience"],
      "Epochs without a lower val loss before multiplying the LR by --reduce_lr_factor.", lower_bound=1)
    _d(flags.DEFINE_float, fv)("reduce_lr_factor", default["reduce_lr_factor"], "LR multiplier on a plateau.",
      lower_bound=0.0, upper_bound=1.0)
    _d(flags.DEFINE_float, fv)("min_learning_rate", default["min_learning_rate"],
      "Floor of the LR reductions.",
      lower_bound=0.0)
    share(fv, "batchnorm_momentum", default["batchnorm_momentum"])
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
    from preprocess.config import BuildConfig
    _d(flags.DEFINE_string, fv)("nih_dir", None,
      "A real NIH ChestX-ray14 download (Data_Entry CSV, BBox_List_2017.csv, split lists and "
      "images_0NN/images/). Default: generate a synthetic NIH-format dataset.")
    share(fv, "output_dir", note="Here: everything the demo writes: data/, shards/, models/, predictions/, "
          "submission.csv, report/, served/. Default: runs/demo for the synthetic data, runs/demo-<--nih_dir's "
          "folder name> for real data, so each data set keeps its own runs.")
    share(fv, "num_patients", 300, lower_bound=10)
    share(fv, "source_size", 512, lower_bound=64)
    share(fv, "image_size", None, "Here: stored and trained (default: 64 synthetic, 224 real).", lower_bound=32)
    share(fv, "crop", BuildConfig.crop, "Here: of the build; none by default, because only abnormal images have boxes.")
    share(fv, "weights", None, "Default: none synthetic, imagenet real.")
    share(fv, "epochs", None, "Default: 8 synthetic, the reference's real.")
    share(fv, "learning_rate", None, "Here: of every backbone (default synthetic: "
          f"{registry.describe('from_scratch_learning_rate', '{:g}')}; real: the reference's).")
    share(fv, "batchnorm_momentum", None, "Default: 0.9 synthetic, the backbone's own real.")
    share(fv, "global_batch_size", 16, "Here: train.py's.")
    _d(flags.DEFINE_multi_enum, fv)("backbones", backbones(), backbones(),
      "A backbone to train, one per backbone (default: all of them).")


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
    share(fv, "transfer", default["transfer"])


# Names that used to mean something else in a tool, per tool: old name -> what to pass instead.
# run_tool refuses them in one line before absl parses, so an old command never runs on a new meaning.
RENAMED = {
    define_build_flags: {"split": "--split_by (how records are split; --split now only names a split "
                                  "to read)"},
    define_ensemble_flags: {"weights": "--blend_weight (repeat it, one per --predictions, in their order; "
                                       "--weights now only names a backbone's initial weights)",
                            "labels_csv": "--other_labels_csv"},
    define_predict_flags: {"batch_size": "--global_batch_size"},
    define_explain_flags: {"batch_size": "--global_batch_size"},
    define_demo_flags: {"data_dir": "--nih_dir (--data_dir now only names a shard folder)"},
}


def run_tool(define, main, doc: str | None, **kwargs) -> None:
    """`tool_runner.run_tool` with the tool's RENAMED entries (how a tool runs around its flags
    (--help, required flags, one-line errors) lives in tool_runner.py)."""
    tool_runner.run_tool(define, main, doc, renamed=RENAMED.get(define, {}), **kwargs)
