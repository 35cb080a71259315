"""Evaluation, in the order a report is made.

* :mod:`.report`: :func:`evaluate_model` and :func:`write_report`, the report and its files;
* :mod:`.thresholds`: Youden's J on validation, the operating points, where thresholds are stored;
* :mod:`.bootstrap`: patient-bootstrap intervals (the statistics under the report and the subgroups);
* :mod:`.subgroups`: sex, age band, view position; underdiagnosis and TPR/FPR gaps;
* :mod:`.calibration`: ECE, Brier, reliability diagrams, per-label temperature scaling;
* :mod:`.localization`: heatmaps against the NIH boxes (pointing game, IoU/IoBB);
* :mod:`.explainers` with :mod:`.heatmaps`: the heatmap methods and their drawing.
"""

from .bootstrap import (
    bootstrap_distribution,
    bootstrap_report,
    interval,
    macro_auc,
    metric_table,
    patient_resamples,
    weighted_auc_ap,
)
from .report import (
    CLAIM_2024,
    REPORT_FILES,
    SUBGROUP_COLUMNS,
    TRIPOD_AI,
    Evaluation,
    calibration_markdown,
    calibration_section,
    checklist_markdown,
    evaluate_model,
    localization_markdown,
    plot_curves,
    report_markdown,
    reporting_checklist,
    subgroup_section,
    subgroups_markdown,
    weights_fingerprint,
    write_report,
)
from .thresholds import (
    FALLBACK_THRESHOLD,
    THRESHOLD_RULE,
    THRESHOLDS_FILE,
    choose_thresholds,
    operating_points,
    store_thresholds,
    threshold_config_entries,
    write_thresholds,
)

__all__ = [
    "CLAIM_2024",
    "FALLBACK_THRESHOLD",
    "REPORT_FILES",
    "SUBGROUP_COLUMNS",
    "THRESHOLDS_FILE",
    "THRESHOLD_RULE",
    "TRIPOD_AI",
    "Evaluation",
    "bootstrap_distribution",
    "bootstrap_report",
    "calibration_markdown",
    "calibration_section",
    "checklist_markdown",
    "choose_thresholds",
    "evaluate_model",
    "interval",
    "localization_markdown",
    "macro_auc",
    "metric_table",
    "operating_points",
    "patient_resamples",
    "plot_curves",
    "report_markdown",
    "reporting_checklist",
    "store_thresholds",
    "subgroup_section",
    "subgroups_markdown",
    "threshold_config_entries",
    "weighted_auc_ap",
    "weights_fingerprint",
    "write_report",
    "write_thresholds",
]
