"""Gradio demo: upload a chest X-ray (PNG, JPEG, TIFF or DICOM), see the 15 label probabilities, positives, heatmaps.

    python app.py --model outputs/quickstart [--explainer grad_rollout|gradcam|rollout]   # http://127.0.0.1:7860
    CXR_VIT_MODEL=you/cxr-vit-base python app.py        # a Hugging Face Space: set the variable, keep app.py

Space-ready: a Space runs `python app.py` and sets GRADIO_SERVER_NAME/PORT, which Gradio reads when --host and
--port are not given. Positives use the per-label thresholds that scripts/evaluate.py stored in the model's
config.json (0.5 when there are none; the page says which). Heatmaps come from the explainer registry that the
evaluation report scores (cxr_vit.evaluation.explainers): --explainer, else the default, else gradcam where the
model's family needs it; a model no explainer supports is served without heatmaps, and the page says why.
--backend onnx serves an export folder of scripts/export_onnx.py with ONNX Runtime, --backend inductor one of
scripts/export_inductor.py (static int8, compiled at the first image), both on the CPU, without heatmaps. --precision
auto (bf16 where the device computes it natively) is the scripts' option; the page says what computed each result.
Research demo, not for clinical use.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import gradio as gr
from PIL import Image

from cxr_vit import LABELS, Predictor
from cxr_vit.cli import add_backend_argument, add_precision_argument
from cxr_vit.data.images import XrayReadError, xray_size
from cxr_vit.evaluation.explainers import EXPLAINERS, ExplainerError
from cxr_vit.prediction import ModelLoadError, UnreadableImageError, read_image

MODEL_ENV = "CXR_VIT_MODEL"
MAX_FILE_MB = 25  # a 16-bit 3000x3000 DICOM export is ~18 MB; a real NIH PNG is under 1 MB
MAX_PIXELS = 40_000_000
HEATMAP_TOP_K = 3
NOTICE = (
    "**Not for clinical use.** A research demo of a model trained on NIH ChestX-ray14 labels, which were mined "
    "from radiology reports and are known to be noisy. Its outputs are not a diagnosis: do not use them to "
    "diagnose, treat or triage anyone."
)
CSS = "#notice { background: #fff4e5; border: 1px solid #f0a020; border-radius: 8px; padding: 4px 14px; }"


def analyse(predictor: Predictor, path: str | None) -> tuple[dict[str, float], str, Image.Image | None]:
    """One upload -> (label probabilities, positives as Markdown, heatmap panel or None); gr.Error for bad uploads."""
    if not path:
        raise gr.Error("Upload a chest X-ray (PNG, JPEG, TIFF or DICOM).")
    name = Path(path).name
    size_mb = os.path.getsize(path) / 1024**2
    if size_mb > MAX_FILE_MB:
        raise gr.Error(f"{name} is {size_mb:.0f} MB: the limit is {MAX_FILE_MB} MB.")
    try:
        width, height = xray_size(path)  # the header only: reject huge images before decoding them
    except XrayReadError as err:
        raise gr.Error(f"{name} is not an image this demo can read: upload a PNG, JPEG, TIFF or DICOM X-ray.") from err
    if width * height > MAX_PIXELS:
        raise gr.Error(f"{name} is {width}x{height} pixels: the limit is {MAX_PIXELS // 1_000_000} megapixels.")
    try:
        image = read_image(path)
    except UnreadableImageError as err:
        reason = str(err).split(": ", 1)[-1]  # the reader's reason, without the server's temporary path
        raise gr.Error(f"{name} could not be decoded ({reason}).") from err
    top_k = HEATMAP_TOP_K if predictor.explainer is not None else 0
    prediction = predictor.predict([image], heatmap_top_k=top_k)[0]
    probabilities = {label: float(p) for label, p in zip(LABELS, prediction.probabilities, strict=True)}
    return probabilities, positives_markdown(predictor, probabilities), prediction.heatmap


def positives_markdown(predictor: Predictor, probabilities: dict[str, float]) -> str:
    """The labels at or above their thresholds, each with its probability and threshold, and the rule used."""
    thresholds = dict(zip(LABELS, predictor.thresholds, strict=True))
    lines = [
        f"- **{label}**: {probabilities[label]:.3f} (threshold {thresholds[label]:.3f})"
        for label in sorted(probabilities, key=probabilities.get, reverse=True)
        if probabilities[label] >= thresholds[label]
    ]
    body = "\n".join(lines) if lines else "None of the 15 labels reaches its threshold."
    computed = f"computed in {predictor.runtime} on {predictor.device}"
    return f"### Positive at the stored thresholds\n{body}\n\n<small>{predictor.thresholds_source}; {computed}</small>"


def heatmap_label(predictor: Predictor) -> str:
    """What the heatmap panel shows: which explainer and why, or why there is none."""
    if predictor.explainer is None:
        return f"No heatmaps for this model ({predictor.explainer_source})"
    return (
        f"Heatmaps ({predictor.explainer}, {predictor.explainer_source}): where the model looked for its top "
        f"{HEATMAP_TOP_K} findings"
    )


def build_demo(predictor: Predictor, model_name: str) -> gr.Blocks:
    with gr.Blocks(title="cxr-vit chest X-ray demo") as demo:
        gr.Markdown(f"# Chest X-ray findings (NIH ChestX-ray14, 15 labels)\nModel: `{model_name}`")
        gr.Markdown(f"⚠️ {NOTICE}", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    # Any file: DICOM is recognised by content, and PACS exports are often named by UID.
                    label="Chest X-ray (PNG, JPEG, TIFF or DICOM; 8-, 12- or 16-bit)",
                    type="filepath",
                    elem_id="upload",
                )
                positives = gr.Markdown(elem_id="positives")
            with gr.Column(scale=1):
                probabilities = gr.Label(
                    num_top_classes=len(LABELS),
                    label="Probabilities (independent, sorted)",
                    show_heading=False,  # a multi-label output has no single "the" answer to headline
                    elem_id="probabilities",
                )
        heatmap = gr.Image(
            label=heatmap_label(predictor),
            type="pil",
            interactive=False,
            elem_id="heatmap",
        )
        upload.upload(functools.partial(analyse, predictor), inputs=upload, outputs=[probabilities, positives, heatmap])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV), help=f"Model folder or Hub id (or ${MODEL_ENV}).")
    parser.add_argument("--host", default=None, help="Address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: $GRADIO_SERVER_PORT or 7860).")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available).")
    add_backend_argument(parser)
    add_precision_argument(parser)
    parser.add_argument(
        "--explainer",
        default=None,
        choices=sorted(EXPLAINERS),
        help="Heatmap method (default: the package default, gradcam where the model's family needs it).",
    )
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(f"give --model (a cxr-vit model folder or Hub id) or set {MODEL_ENV}")
    try:
        predictor = Predictor.from_pretrained(
            args.model, device=args.device, precision=args.precision, explainer=args.explainer, backend=args.backend
        )
    except (ModelLoadError, ExplainerError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    build_demo(predictor, args.model).launch(
        server_name=args.host, server_port=args.port, max_file_size=f"{MAX_FILE_MB}mb", show_error=True, css=CSS
    )


if __name__ == "__main__":
    main()
