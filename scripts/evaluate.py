"""Evaluate a cxr-vit model on a prepared dataset split and choose its per-label operating thresholds.

    python scripts/evaluate.py --model outputs/quickstart --dataset_name data/nih_mini_prepared \
        [--split test] --output_dir outputs/quickstart/evaluation [--n_bootstrap 1000] \
        [--bbox_csv BBox_List_2017.csv [--explainer grad_rollout|gradcam|rollout]]

Writes report.json, report.md, thresholds.json, roc_curves.png, pr_curves.png, reliability_diagram.png and
subgroup_forest.png to --output_dir: per-label ROC-AUC and AUPRC with 95% confidence intervals from a bootstrap
over patients, the 14-finding macro AUC as the headline, No Finding apart, and sensitivity / specificity / PPV / F1
at per-label thresholds chosen by Youden's J on the validation split. Then the sections reporting standards ask
for: subgroups by sex, age band and view position (when the split has those columns), calibration (ECE, Brier,
reliability diagrams; before and after for a model made by scripts/calibrate.py) and, with --bbox_csv (NIH's
BBox_List_2017.csv as distributed, or gzipped), how well the heatmaps of --explainer point at the radiologists'
boxes on the split's images, beside Wang et al. 2017. Without --explainer the default explainer is used, or
gradcam where the model's family does not support it; an --explainer that cannot explain the model is an error.
A report written to <model>/evaluation is what the model card and push_to_hub.py pick up. --backend onnx evaluates
an export folder of scripts/export_onnx.py run by ONNX Runtime (fp32 or int8), through the same preprocessing and
report; no localization there (heatmaps need gradients) and no calibration before/after.

--split all scores every image of the set (an external set is usually scored whole). On a set from a source the
model was not trained on (its `source` column; docs/external.md), and with --split all, the thresholds are the ones
stored with the model (chosen on its training source's validation split: config.json, or the thresholds.json of
<model>/evaluation), labels the set does not annotate are reported with auc null and the reason, and an external
set's report gets an "External validation" section beside the model's own report in <model>/evaluation.

The model folder is left untouched; --save_thresholds also stores the thresholds in its
config.json (key cxr_vit_thresholds), where scripts/predict.py and app.py read them (for a Hub id, an updated
config.json goes to --output_dir, with the command that uploads it). predict.py --thresholds thresholds.json uses
the file without touching the model.
"""

import argparse
import logging
import sys
from pathlib import Path

from cxr_vit import NIHDataError, load_chestxray14, load_model
from cxr_vit.cli import (
    add_dataset_arguments,
    add_model_arguments,
    add_runtime_arguments,
    check_runtime_arguments,
    public_dataset,
)
from cxr_vit.data import select_splits
from cxr_vit.data.schemas import ALL_SPLITS
from cxr_vit.evaluation import (
    THRESHOLD_RULE,
    THRESHOLDS_FILE,
    evaluate_model,
    store_thresholds,
    threshold_config_entries,
    write_report,
    write_thresholds,
)
from cxr_vit.evaluation.explainers import EXPLAINERS, ExplainerError, resolve_explainer
from cxr_vit.evaluation.external import ExternalValidationError, external_section, external_setting, internal_report
from cxr_vit.evaluation.localization import read_bbox_csv
from cxr_vit.inference import NO_GRADIENTS
from cxr_vit.markdown import format_ci
from cxr_vit.prediction import ModelLoadError
from cxr_vit.public_names import model_reference


def section_summary(report: dict, split: str) -> list[str]:
    """One line each for calibration, subgroups and localization, as the console summary."""
    calibration = report["calibration"]
    after = calibration["model"]
    if calibration["uncalibrated"] is not None:
        before = calibration["uncalibrated"]
        lines = [
            f"ECE (macro, 14 findings) on {split}: {before['ece_macro']:.4f} before temperature scaling, "
            f"{after['ece_macro']:.4f} after; Brier {before['brier_macro']:.4f} -> {after['brier_macro']:.4f}"
        ]
    else:
        lines = [f"ECE (macro, 14 findings) on {split}: {after['ece_macro']:.4f}; Brier {after['brier_macro']:.4f}"]
    subgroups = report["subgroups"]
    if subgroups["available"]:
        lines.append(f"subgroups: {', '.join(subgroups['attributes'])} (forest plot in subgroup_forest.png)")
    else:
        lines.append(f"subgroups: not available: {subgroups['reason']}")
    localization = report.get("localization")
    if localization:
        overall = localization["overall"]
        if overall["n_boxes"]:
            lines.append(
                f"localization ({localization['explainer']}): pointing game {overall['pointing_accuracy']:.3f} over "
                f"{overall['n_boxes']} boxes (chance {overall['chance_pointing']:.3f})"
            )
        else:
            lines.append(f"localization: none of the {localization['n_boxes_in_file']} boxes is on a {split} image")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(
        parser,
        ensemble="heatmaps and the calibration's before/after are the first model's",
        space_separated=True,
        backend=True,
    )
    add_dataset_arguments(parser, "test", f"The split to report on (default: test; {ALL_SPLITS}: every image).")
    parser.add_argument("--validation_split", default="validation", help="Where thresholds are chosen.")
    parser.add_argument("--output_dir", required=True, help="Where report.json/.md and the curves go.")
    parser.add_argument("--n_bootstrap", type=int, default=1000, help="Patient resamples for the CIs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
    add_runtime_arguments(parser, batch_size=64, workers="DataLoader processes.")
    parser.add_argument(
        "--bbox_csv",
        default=None,
        help="NIH's BBox_List_2017.csv (or .csv.gz) as distributed: score the heatmaps of the split's boxed findings.",
    )
    parser.add_argument(
        "--explainer",
        default=None,
        choices=sorted(EXPLAINERS),
        help="Heatmap method for --bbox_csv (default: the package default, gradcam where the model's family does "
        "not support it).",
    )
    parser.add_argument(
        "--save_thresholds",
        action="store_true",
        help="Also store the chosen thresholds in the model's config.json, for predict.py and app.py.",
    )
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    if args.n_bootstrap < 1:
        parser.error("--n_bootstrap must be at least 1")
    if args.save_thresholds and (len(args.model) > 1 or args.tta > 1):
        parser.error(
            "thresholds chosen on averaged probabilities belong to that averaging, not to one model's config: use the "
            "thresholds.json this writes with predict.py --thresholds and the same --model / --tta"
        )
    names, args.model = args.model, args.model[0]

    if args.bbox_csv and args.backend != "torch":
        parser.error(f"--bbox_csv scores heatmaps: {NO_GRADIENTS}")
    if args.explainer and not args.bbox_csv:
        parser.error("--explainer draws the heatmaps scored against --bbox_csv: give --bbox_csv too")

    try:
        boxes = read_bbox_csv(args.bbox_csv) if args.bbox_csv else None  # a bad file fails before any inference
        model = load_model(args.model, args.backend)
        ensemble = [load_model(name, args.backend) for name in names[1:]]
        if boxes is not None:
            resolve_explainer(model, args.explainer)  # an explainer that cannot explain the model, likewise
        dataset = load_chestxray14(args.dataset_name, args.dataset_config_name, args.split_seed)
        # the bootstrap resamples patients
        (evaluated,) = select_splits(dataset, [args.split], args.dataset_name, columns=["patient_id"])
        setting = external_setting(args.model, model.config, evaluated, args.split, ALL_SPLITS)
        validation = None  # another source, or every image: the thresholds stored with the model
        if setting.thresholds is None:
            (validation,) = select_splits(dataset, [args.validation_split], args.dataset_name)
        elif ensemble or args.tta > 1 or args.save_thresholds:
            raise ValueError(
                "the model's stored thresholds are used here (another source, or --split all): they belong to one "
                "model and one view, and nothing is chosen to save; drop the extra --model / --tta / --save_thresholds"
            )
        if boxes is not None and "image_id" not in evaluated.column_names:
            raise ValueError(
                f"--bbox_csv: split {args.split!r} of {args.dataset_name} has no 'image_id' column to match the "
                "boxes' 'Image Index' with"
            )
    except (ModelLoadError, NIHDataError, ExplainerError, ExternalValidationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if validation is not None and args.split == args.validation_split:
        print(
            f"warning: thresholds are chosen on {args.split!r}, the split evaluated: the sensitivity, specificity, "
            "PPV and F1 are optimistic",
            file=sys.stderr,
        )

    evaluation = evaluate_model(
        model,
        evaluated,
        validation,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        precision=args.precision,
        boxes=boxes,
        explainer=args.explainer,
        bbox_csv=Path(args.bbox_csv).name if args.bbox_csv else "?",
        tta=args.tta,
        ensemble=ensemble,
        thresholds=setting.thresholds,
        thresholds_rule=setting.thresholds_rule,
    )
    if setting.external:
        internal = internal_report(args.model, setting.training_sources, evaluation.report["model_fingerprint"])
        evaluation.report["external_validation"] = external_section(evaluation.report, setting, *internal)
    # report.json/.md, thresholds.json and config.json may be published: names, never local paths
    data = public_dataset(args, dataset)
    evaluation.report.update(
        model=model_reference(args.model),
        models=[model_reference(name) for name in names],
        dataset=data.name,
        dataset_reference=data.to_dict(),
        split=args.split,
        validation_split=args.validation_split,
    )

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    info = {"rule": THRESHOLD_RULE, "dataset": data.name, "split": args.validation_split}
    info.update(model=evaluation.report["model"], models=evaluation.report["models"], tta=args.tta)
    written = []
    if validation is not None:  # chosen here (not the stored ones)
        written.append(write_thresholds(output_dir / THRESHOLDS_FILE, evaluation.thresholds, info))
        evaluation.report["thresholds_file"] = THRESHOLDS_FILE  # beside the report
    if args.save_thresholds:
        entries = threshold_config_entries(evaluation.thresholds, info)
        saved = None
        if Path(args.model).is_dir():
            try:
                saved = store_thresholds(args.model, entries)
            except OSError as err:
                print(f"warning: cannot update {args.model}/config.json ({err}); writing it to {output_dir}")
        if saved is None:  # a Hub id (we never push on the user's behalf) or a read-only folder
            model.config.update(entries)
            model.config.save_pretrained(output_dir)
            saved = output_dir / "config.json"
            print(
                f"the config.json with thresholds is in {saved}; copy it into the model, e.g. for a Hub id:\n"
                f"  hf upload {args.model} {saved} config.json",
                file=sys.stderr,
            )
        print(f"thresholds stored in {saved}")
        in_model = saved.parent.resolve() != output_dir.resolve()
        evaluation.report["thresholds_saved_to"] = f"{model_reference(args.model)}/" * in_model + "config.json"

    paths = write_report(evaluation, output_dir)
    macro = evaluation.report["auc_macro"]
    findings = len(evaluation.report["macro_findings"])
    print(
        f"macro AUC ({findings} findings) on {args.split}: {format_ci(macro)} "
        f"({macro['n_resamples']}/{args.n_bootstrap} resamples had every finding's two classes)"
    )
    for line in section_summary(evaluation.report, args.split):
        print(line)
    print("wrote " + ", ".join(str(path) for path in [*paths.values(), *written]))
    if written and not args.save_thresholds:
        print(f"model folder left untouched; use the thresholds with predict.py --thresholds {written[0]}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
