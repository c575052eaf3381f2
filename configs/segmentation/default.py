"""yacs defaults for semantic segmentation (train_segmentation.py / test_segmentation.py).

The authors' keys keep their names and meanings, so their YAMLs load unchanged; keys marked "addition" are ours.
Defaults are the BiDense UPerNet ADE20K setting (README, Training recipe). Every YAML may override any key, and so may
trailing ``KEY VALUE`` pairs on the command line.
"""

from yacs.config import CfgNode as CN

_C = CN()

_C.DATASET = CN()
# Data set name: "ade20k", "pascal_voc" or "demo" (datasets.list_datasets()).
_C.DATASET.DATASET = "ade20k"
# Data root holding ADEChallengeData2016/ or VOCdevkit/ (the demo set is generated under it); relative to the
# working directory, as in the authors' README.
_C.DATASET.DATA_PATH = "../dataset"
# Training rescale base: the long side is drawn uniformly from [0.5, 2.0] x BASE_SIZE (README, Training recipe).
_C.DATASET.BASE_SIZE = 520
# Square training crop and validation centre crop, pixels (README, Training recipe).
_C.DATASET.CROP_SIZE = 480
# Addition. PASCAL VOC training list: "train" (default; disjoint from val) or "trainval" (the authors' setting,
# which contains the val images, README, deviations). Ignored by other data sets.
_C.DATASET.TRAIN_SPLIT = "train"

_C.TRAINING = CN()
# Data-loader worker processes per training process.
_C.TRAINING.NUM_THREADS = 1
# Effective (total) batch size; reached by gradient accumulation over BATCH_SIZE_ON_1_GPU x devices x nodes.
_C.TRAINING.BATCH_SIZE = 32
# Batch size of one process (one GPU, or one CPU process).
_C.TRAINING.BATCH_SIZE_ON_1_GPU = 2
# Number of training epochs; also the length of the OneCycleLR schedule, stepped once per epoch
# (README, Training recipe).
_C.TRAINING.NUM_EPOCHS = 50
# Peak learning rate of OneCycleLR (AdamW).
_C.TRAINING.MAX_LR = 1e-4
# Validate every EVAL_FREQ epochs.
_C.TRAINING.EVAL_FREQ = 1
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

_C.MODEL = CN()
# Architecture: "upernet" (ConvNeXt-T backbone) or "dpt" (DINOv2 ViT-S/14 backbone) (models.list_models()).
_C.MODEL.MODEL_TYPE = "upernet"
# Binarization method (binary.list_methods()): "fp32" (official float model), "fp32_0" (float mirror of the
# binary architecture), "bidense", or a baseline.
_C.MODEL.BINARY_TYPE = "bidense"
# Number of output classes including the ignore slot: ADE20K 150 + 1 = 151, VOC 21 + 1 = 22. The last index is
# the ignore label (cross-entropy ignore index; excluded from mIoU).
_C.MODEL.NUM_CLASSES = 151
# Addition. Local ImageNet / DINOv2 checkpoint for the fp32 backbone; "" = random initialisation.
_C.MODEL.PRETRAINED = ""

# Seed for Python, NumPy, torch and data-loader workers; cuDNN runs deterministic.
_C.RANDOM_SEED = 1
# Addition. Runs go to OUTPUT_DIR/<config name>/version_<n>/ (merged config, logs, checkpoints/).
_C.OUTPUT_DIR = "runs"


def get_cfg_defaults() -> CN:
    """A fresh copy of the segmentation defaults."""
    return _C.clone()
