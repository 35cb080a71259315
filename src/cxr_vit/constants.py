"""Names shared by every stage: the 15 NIH ChestX-ray14 labels and the file names we write."""

# The canonical label order (alphabetical, as in the NIH release). Every multi-hot vector, logit row and
# table in this project uses it, so numbers can be read against published per-label tables.
LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"
# The 14 findings: the literature's headline macro AUC averages over these, never over "No Finding".
FINDINGS: tuple[str, ...] = tuple(label for label in LABELS if label != NO_FINDING)
NUM_LABELS = len(LABELS)
LABEL2ID: dict[str, int] = {label: i for i, label in enumerate(LABELS)}
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
FINDING_IDS: tuple[int, ...] = tuple(LABEL2ID[label] for label in FINDINGS)

SPLITS: tuple[str, ...] = ("train", "validation", "test")

DEFAULT_MODEL_NAME = "vit_base_patch16_224.augreg2_in21k_ft_in1k"

TRAINING_CURVES_NAME = "training_curves.png"

# Per-label operating thresholds chosen by scripts/evaluate.py on the validation split, stored as extra keys of
# the model's config.json (transformers keeps unknown config keys), so prediction uses them after a stock load.
THRESHOLDS_KEY = "cxr_vit_thresholds"
THRESHOLDS_INFO_KEY = "cxr_vit_thresholds_info"

# Where a prepared image comes from: the `source` column of a prepared set (a set without one is NIH ChestX-ray14, as
# cxr-vit always prepared it), and the config.json key listing the sources a model was trained on (scripts/train.py).
SOURCE_COLUMN = "source"
DEFAULT_SOURCE = "nih"
SOURCES_KEY = "cxr_vit_training_sources"
