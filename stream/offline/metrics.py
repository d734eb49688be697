"""Classification metrics: moved to :mod:`stream.core.metrics` (the run-time fusion uses them
too); re-exported here for the scripts that import them from the offline package."""

from stream.core import metrics
from stream.core.metrics import (  # noqa: F401 (re-exported)
    confusion_matrix,
    confusion_matrix_percent,
    macro_f1,
    macro_from_confusion,
    per_class_f1,
    per_class_from_confusion,
    per_class_recall,
    report,
    support,
    uar,
)

__all__ = list(metrics.__all__)
