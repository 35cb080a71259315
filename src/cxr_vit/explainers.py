"""The old name of :mod:`cxr_vit.evaluation.explainers`: the same module object, so old imports keep working."""

import sys

from .evaluation import explainers

sys.modules[__name__] = explainers
