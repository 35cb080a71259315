"""The old name of :mod:`cxr_vit.evaluation.heatmaps`: the same module object, so old imports keep working."""

import sys

from .evaluation import heatmaps

sys.modules[__name__] = heatmaps
