"""yacs defaults for monocular depth estimation (train_depth.py / test_depth.py).

The authors' keys keep their names and meanings, so their YAMLs load unchanged; keys marked "addition" are ours.
Defaults are the BiDense UPerNet NYUv2 setting (README, Training recipe). Every YAML may override any key, and so may
trailing ``KEY VALUE`` pairs on the command line. Paths are relative to the working directory.
"""

from yacs.config import CfgNode as CN

_C = CN()

_C.DATASET = CN()
# Data set name: "nyu", "kitti" or "demo" (datasets.list_datasets()).
_C.DATASET.DATASET = "nyu"
# Root of the training images; the first column of FILENAMES_FILE is relative to it (BTS layout). For "demo",
# the root under which the demo set is generated.
_C.DATASET.DATA_PATH = "../dataset/nyu_depth_v2/sync/"
# Root of the training ground-truth depth maps (second column of FILENAMES_FILE).
_C.DATASET.GT_PATH = "../dataset/nyu_depth_v2/sync/"
# Training list: lines "rgb depth focal" (BTS split files).
_C.DATASET.FILENAMES_FILE = "train_test_inputs/nyudepthv2_train_files_with_gt.txt"
# Root of the evaluation images.
_C.DATASET.DATA_PATH_EVAL = "../dataset/nyu_depth_v2/official_splits/test/"
# Root of the evaluation ground-truth depth maps.
_C.DATASET.GT_PATH_EVAL = "../dataset/nyu_depth_v2/official_splits/test/"
# Evaluation list (NYU 654 test images; KITTI Eigen test, lines with "None" skipped: 652).
_C.DATASET.FILENAMES_FILE_EVAL = "train_test_inputs/nyudepthv2_test_files_with_gt.txt"
# Training random-crop height, pixels (NYU 416, KITTI 352; README, Training recipe).
_C.DATASET.INPUT_HEIGHT = 416
# Training random-crop width, pixels (NYU 544, KITTI 704).
_C.DATASET.INPUT_WIDTH = 544

_C.PREPROCESSING = CN()
# Random rotation of image and depth during training.
_C.PREPROCESSING.DO_RANDOM_ROTATE = True
# Maximum rotation angle, degrees (NYU 2.5, KITTI 1.0).
_C.PREPROCESSING.DEGREE = 2.5
# KITTI KB crop to 352 x 1216 (bottom-centred), for training and evaluation.
_C.PREPROCESSING.DO_KB_CROP = False
# Also train on the right camera (KITTI); False as released.
_C.PREPROCESSING.USE_RIGHT = False

_C.TRAINING = CN()
# Data-loader worker processes per training process.
_C.TRAINING.NUM_THREADS = 1
# Effective (total) batch size; reached by gradient accumulation over BATCH_SIZE_ON_1_GPU x devices x nodes.
_C.TRAINING.BATCH_SIZE = 32
# Batch size of one process (one GPU, or one CPU process).
_C.TRAINING.BATCH_SIZE_ON_1_GPU = 4
# Number of training epochs; also the length of the OneCycleLR schedule, stepped once per epoch
# (README, Training recipe).
_C.TRAINING.NUM_EPOCHS = 50
# SILog variance focus lambda in 10 * sqrt(mean(d^2) - lambda * mean(d)^2) (README, Training recipe).
_C.TRAINING.VARIANCE_FOCUS = 0.85
# Peak learning rate of OneCycleLR (AdamW).
_C.TRAINING.MAX_LR = 6e-5
# Addition. Ground truth at or below this depth (metres) is left out of the loss; None = the authors' rule,
# 1.0 for "kitti" and 0.1 otherwise (README, Training recipe).
_C.TRAINING.LOSS_MIN_DEPTH = None
# Addition. AdamW weight decay on all parameters (PyTorch's default, as released).
_C.TRAINING.WEIGHT_DECAY = 0.01
# Addition. Lightning precision: "32" (as released), "bf16-mixed", "16-mixed".
_C.TRAINING.PRECISION = "32"
# Addition. Compile the whole model with torch.compile (default backend) before training or evaluation; the
# weights and checkpoint keys are unchanged, so a checkpoint moves freely between compiled and eager runs. The
# first steps of each mode (training, evaluation) pay the compilation (minutes for UPerNet on a CPU; README,
# Training and evaluation).
_C.TRAINING.COMPILE = False
# Addition. Number of nodes (machines) for multi-node DDP under torchrun or SLURM.
_C.TRAINING.NUM_NODES = 1
# Addition. End this invocation after this many epochs of the NUM_EPOCHS schedule (0 = run to NUM_EPOCHS); continue
# later with --resume last.ckpt (for time-limited cluster jobs).
_C.TRAINING.STOP_AT_EPOCH = 0
# Addition. Training batches per epoch: an integer is a number (1 = one batch), a float a fraction (1.0 = all).
_C.TRAINING.LIMIT_TRAIN_BATCHES = 1.0
# Addition. Evaluation batches (validation and test): an integer is a number, a float a fraction (1.0 = all).
_C.TRAINING.LIMIT_VAL_BATCHES = 1.0
# Addition. Log the training loss every LOG_EVERY_N_STEPS optimizer steps.
_C.TRAINING.LOG_EVERY_N_STEPS = 10

_C.ONLINE_EVAL = CN()
# Evaluate on the evaluation list during training.
_C.ONLINE_EVAL.DO_ONLINE_EVAL = True
# Ground truth must exceed this depth (metres) to be evaluated.
_C.ONLINE_EVAL.MIN_DEPTH_EVAL = 1e-3
# Ground truth must be below this depth (metres) to be evaluated; predictions are clamped to it (NYU 10, KITTI 80).
_C.ONLINE_EVAL.MAX_DEPTH_EVAL = 10.0
# Eigen crop (NYU, rows 45:471, cols 41:601 of 480 x 640) applied to evaluation.
_C.ONLINE_EVAL.EIGEN_CROP = True
# Garg crop (KITTI) applied to evaluation.
_C.ONLINE_EVAL.GARG_CROP = False
# Validate every EVAL_FREQ epochs.
_C.ONLINE_EVAL.EVAL_FREQ = 1

_C.MODEL = CN()
# Architecture: "upernet" (ConvNeXt-T backbone) or "dpt" (DINOv2 ViT-S/14 backbone) (models.list_models()).
_C.MODEL.MODEL_TYPE = "upernet"
# Binarization method (binary.list_methods()): "fp32", "fp32_0", "bidense", or a baseline.
_C.MODEL.BINARY_TYPE = "bidense"
# Output depth is sigmoid(x) * MAX_DEPTH, metres (NYU 10, KITTI 80).
_C.MODEL.MAX_DEPTH = 10.0
# Addition. Local ImageNet / DINOv2 checkpoint for the fp32 backbone; "" = random initialisation.
_C.MODEL.PRETRAINED = ""

# Seed for Python, NumPy, torch and data-loader workers; cuDNN runs deterministic.
_C.RANDOM_SEED = 1
# Addition. Runs go to OUTPUT_DIR/<config name>/version_<n>/ (merged config, logs, checkpoints/).
_C.OUTPUT_DIR = "runs"


def get_cfg_defaults() -> CN:
    """A fresh copy of the depth defaults."""
    return _C.clone()
