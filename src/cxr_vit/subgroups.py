"""The old name of :mod:`cxr_vit.evaluation.subgroups`: the same module object, so old imports keep working."""

import sys

from .evaluation import subgroups

sys.modules[__name__] = subgroups
