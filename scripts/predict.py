"""Predict the 15 NIH labels for X-ray image files and folders, optionally with heatmaps.

    python scripts/predict.py --model outputs/quickstart xrays/ one.png --output preds.csv [--heatmaps heatmaps/] \
        [--explainer grad_rollout|gradcam|rollout] [--num_workers 2] [--resume] [--dicom_output results/]
    python scripts/predict.py --backend onnx --model outputs/quickstart_onnx xrays/ --output preds.csv
    torchrun --nproc_per_node 4 scripts/predict.py --model outputs/quickstart archive/ --output preds.csv [--resume]

PATH is a file or a folder (searched recursively for .png/.jpg/.jpeg; grayscale, RGB, RGBA and 16-bit all
work). preds.csv has one row per readable image: path, the 15 probabilities in canonical label order, and
`positives`, the labels at or above the per-label thresholds: --thresholds (a thresholds.json of
scripts/evaluate.py), else those evaluate.py --save_thresholds stored in the model's config.json, else 0.5 (the
script says which). preds.csv.json beside it records the precision, backend, device and thresholds used
(--precision auto: bf16 where the device computes it natively, a GPU or a CPU with AVX512-BF16/AMX; else fp32).
Unreadable files are named and skipped. Predictions go through the same preprocessing and
precision as the Trainer's evaluation and the evaluation report; --backend onnx runs the model of an export folder
(scripts/export_onnx.py) with ONNX Runtime instead, same preprocessing and thresholds, no heatmaps (they need
gradients). Rows are written as images are done (--num_workers processes decode them), so a killed run keeps what
it wrote and --resume skips the files already in the CSV. Heatmaps come from the explainer registry that
evaluate.py --bbox_csv scores: --explainer, else the default, else gradcam where the model's family needs it; an
--explainer that cannot explain the model is an error. Under torchrun or accelerate launch each process predicts
its share of the files into its own CSV and rank 0 merges them into --output (docs/speed.md, "Many films").
--dicom_output DIR writes, for each DICOM input, a TID 1500 SR of its probabilities and calls and (PyTorch backend)
a heatmap Secondary Capture per positive finding, in the film's study, as DIR/<SOPInstanceUID>.dcm (docs/dicom.md).

Exit code: 0 all images predicted, 1 some files were skipped (or got no DICOM results), 2 bad arguments (model,
paths, no images).
"""

import argparse
import logging
import sys
from pathlib import Path

from cxr_vit.cli import add_model_arguments, add_runtime_arguments, check_runtime_arguments
from cxr_vit.dicom import algorithm_info, write_film_results
from cxr_vit.evaluation.explainers import EXPLAINERS, ExplainerError
from cxr_vit.prediction import (
    ModelLoadError,
    PredictionsCSV,
    Predictor,
    Shard,
    UnreadableImageError,
    find_images,
    heatmap_file_name,
    merge_shards,
    predict_files,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Image files and/or folders.")
    add_model_arguments(parser, ensemble="heatmaps and stored thresholds are the first model's", backend=True)
    parser.add_argument("--output", required=True, help="CSV file to write.")
    parser.add_argument(
        "--resume", action="store_true", help="Keep the rows already in --output and predict only the other files."
    )
    parser.add_argument("--heatmaps", metavar="DIR", help="Write a heatmap overlay PNG per image here.")
    parser.add_argument(
        "--explainer",
        default=None,
        choices=sorted(EXPLAINERS),
        help="Heatmap method (default: the package default, gradcam where the model's family needs it).",
    )
    parser.add_argument("--heatmap_top_k", type=int, default=3, help="Findings per heatmap panel (default 3).")
    add_runtime_arguments(parser, batch_size=32, workers="DataLoader processes that decode images.")
    parser.add_argument("--thresholds", metavar="JSON", help="A thresholds.json written by scripts/evaluate.py.")
    parser.add_argument(
        "--dicom_output", metavar="DIR", help="Write DICOM results (SR + heatmap overlays) of DICOM inputs here."
    )
    args = parser.parse_args(argv)
    check_runtime_arguments(parser, args)
    if not 1 <= args.heatmap_top_k <= 14:
        parser.error("--heatmap_top_k must be between 1 and 14")
    if args.explainer and not args.heatmaps:
        parser.error("--explainer draws the --heatmaps: give --heatmaps DIR too")

    shard = Shard.from_environment()  # under torchrun / accelerate launch: this process's share of the files
    try:
        paths = find_images(args.paths)
        predictor = Predictor.from_pretrained(
            args.model[0],
            device=shard.device(args.device),
            precision=args.precision,
            thresholds_file=args.thresholds,
            explainer=args.explainer,
            tta=args.tta,
            ensemble=args.model[1:],
            backend=args.backend,
        )
        if args.heatmaps and predictor.explainer is None:
            raise ExplainerError(f"--heatmaps: {predictor.explainer_source}")
    except (FileNotFoundError, ModelLoadError, ExplainerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no .png/.jpg/.jpeg files in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    print(predictor.thresholds_source, file=sys.stderr)
    print(f"computing in {predictor.runtime} on {predictor.device}", file=sys.stderr)
    if args.heatmaps:
        print(f"heatmaps: {predictor.explainer} ({predictor.explainer_source})", file=sys.stderr)

    heatmap_dir = Path(args.heatmaps) if args.heatmaps else None
    if heatmap_dir:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
    try:
        csv = PredictionsCSV(
            shard.csv_path(args.output), heatmaps=heatmap_dir is not None, resume=args.resume, record=predictor.record()
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pending = shard.pending(paths, args.output, args.resume)
    todo = [path for path in shard.take(pending) if str(path) not in csv.done]
    csv.taken |= shard.others_heatmap_names(pending, csv.taken)
    if csv.done:
        print(f"resuming: {len(paths) - len(todo)} of {len(paths)} files are already in {args.output}", file=sys.stderr)
    written, skipped, no_results, dicom_written = 0, [], [], 0
    algorithm = algorithm_info(predictor, args.model[0], args.thresholds) if args.dicom_output else None
    top_k = args.heatmap_top_k if heatmap_dir else 0
    with csv:
        for result in predict_files(predictor, todo, args.batch_size, top_k, args.num_workers):
            if isinstance(result, UnreadableImageError):
                skipped.append(str(result))
                continue
            heatmap_path = None
            if heatmap_dir:
                heatmap_path = str(heatmap_dir / heatmap_file_name(result.path, csv.taken))
                result.heatmap.save(heatmap_path)
            if algorithm is not None:
                try:
                    dicom_written += len(write_film_results(predictor, result, algorithm, args.dicom_output))
                except ValueError as err:  # predicted, but its header cannot hold results: named at the end
                    no_results.append(str(err))
            csv.write(result, heatmap_path)
            written += 1
    if shard.sharded:
        shard.wait_for_everyone()
        if shard.rank == 0:
            print(f"merged {merge_shards(args.output, shard, pending, args.resume)} rows into {args.output}")
    print(
        f"wrote {written} predictions to {csv.path}"
        + (f" ({len(paths) - len(todo)} already there)" if csv.done else "")
        + (f", heatmaps in {heatmap_dir}" if heatmap_dir else "")
        + (f", {dicom_written} DICOM results in {args.dicom_output}" if args.dicom_output else "")
    )
    if no_results:
        print(f"no DICOM results for {len(no_results)} file(s):", *no_results, sep="\n  ", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", *skipped, sep="\n  ", file=sys.stderr)
    return 1 if skipped or no_results else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
