"""The old name of :mod:`cxr_vit.evaluation.calibration`: the same module object, so old imports keep working."""

import sys

from .evaluation import calibration

sys.modules[__name__] = calibration
