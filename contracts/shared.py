"""The one meaning of each setting name several tools take whose subject is a file or folder of contracts/.

Each tool's field of such a name is `NAME.field(default, note)` (contracts/settings.py); the other
shared names live beside what they mean (training/config.py, evaluation/settings.py, ...).
"""

from contracts.run_folder import CONFIG, MODEL
from contracts.settings import Shared

DATA_DIR = Shared("data_dir", None, "Shard folder written by build_tfrecords.py (holds manifest.json).")
SPLIT = Shared("split", None, "Split of --data_dir to read, e.g. test, val or eval.")
IMAGES = Shared("images", None, (
    "Instead of --data_dir: raw PNG, JPEG or DICOM files, a folder (searched recursively, DICOM found by "
    "content) or a quoted glob, decoded by the builder's own code into a temporary shard folder. DICOM "
    "files are keyed by their path under the folder."))
MODEL_DIR = Shared("model_dir", None, f"Folder of a train.py run ({MODEL} + {CONFIG}).")
ENSEMBLE = Shared("ensemble", None, (
    "The .probabilities.json that ensemble.py wrote beside its submission (members, weights, threshold); "
    "the --model_dir folders must be exactly its members."))
OUTPUT = Shared("output", None, "The CSV this tool writes.")
OUTPUT_DIR = Shared("output_dir", None, "The folder this tool writes into.")
LABELS_CSV = Shared("labels_csv", None, (
    "Labels of some or all of the images: a CSV keyed by image_id (file name, or a DICOM file's path "
    "under the folder), Image Index or SOPInstanceUID, with a 0/1 'label' or NIH 'Finding Labels' "
    "column. Images it does not name stay unlabeled (-1)."))
IMAGE_SIZE = Shared("image_size", None, "Side of the square images, in pixels.", lower=8)
WORKERS = Shared("workers", None, "Processes decoding images (default: every core). Never changes the "
                 "output.", lower=1)
SEED = Shared("seed", 0, "Seed of the tool's randomness: same seed, same output.")
