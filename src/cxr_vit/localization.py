"""The old name of :mod:`cxr_vit.evaluation.localization`: the same module object, so old imports keep working."""

import sys

from .evaluation import localization

sys.modules[__name__] = localization
