"""A film's predictions as DICOM objects a PACS stores and its viewers show, in the film's own study.

- a Comprehensive 3D SR following TID 1500 (Measurement Report, built and validated by highdicom): one TID 1501
  measurement group per label, holding the finding's code, its probability as a NUM (DCM 122157 "Probability",
  unitless) and, when thresholds are given, the call at that threshold as a qualitative evaluation (the finding:
  Present / Absent); each group references the source image and identifies the algorithm (model id, version, the
  label's threshold and where the thresholds came from, "NOT FOR CLINICAL USE");
- per positive finding, when heatmaps are given, a Secondary Capture image of the film with the heatmap burned in
  and captioned (derived, burned-in annotation, "NOT FOR CLINICAL USE"), for viewers without SR support.

Every UID of a result is derived from the source film's SOP Instance UID and the algorithm's name and version
(:func:`result_uid`), so processing a film twice gives the same objects under the same UIDs: a PACS (or the DICOM
node) keeps one copy. Objects are written as ``<SOPInstanceUID>.dcm`` (:func:`write_results`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from .. import __version__
from ..atomic import write_atomic
from ..constants import LABELS
from ..data.images import dicom_to_gray
from ..inductor_model import PROGRAM_FILE
from ..onnx_model import ONNX_FILE
from ..public_names import model_reference
from .codes import (
    ABSENT,
    FINDING_CODES,
    IMAGING_PROCEDURE,
    NO_UNITS,
    PRESENT,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    PROBABILITY,
)

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
MANUFACTURER = "cxr-vit"
SR_SERIES_NUMBER = 9001  # high numbers keep result series after the acquired ones in a viewer's series list
OVERLAY_SERIES_NUMBER = 9002
SR_SERIES_DESCRIPTION = f"cxr-vit AI results, {NOT_FOR_CLINICAL_USE}"
OVERLAY_SERIES_DESCRIPTION = f"cxr-vit heatmaps, {NOT_FOR_CLINICAL_USE}"
OVERLAY_MAX_SIDE = 1024  # the overlay's longer side: enough to see where, small enough for any PACS
_OVERLAY_ALPHA = 0.5
_CAPTION_HEIGHT = 1 / 16  # one caption line, as a share of the film's height (12 pixels at least)


@dataclass(frozen=True)
class AlgorithmInfo:
    """What made the results, written into every object: the model's id, its version (a Hub commit or a hash of
    its weights, plus the cxr-vit version) and where its thresholds came from."""

    name: str
    version: str
    thresholds_source: str = "none: probabilities only"
    computed_in: str = ""  # the precision and device (Predictor.runtime): bf16 and fp32 differ in the last digits

    @classmethod
    def for_model(cls, name_or_path: str | os.PathLike, config=None, thresholds_source: str = "") -> AlgorithmInfo:
        """From a model folder or Hub id: the name is the Hub id or the folder's name (no local path goes into
        the results); the version is the Hub commit when there is one, else the SHA-256 of the weights file."""
        path = Path(name_or_path)
        commit = getattr(config, "_commit_hash", None) if config is not None else None
        files = ("model.safetensors", ONNX_FILE, PROGRAM_FILE)  # the weights, or the export's graph
        weights = next((path / name for name in files if (path / name).is_file()), None)
        if commit:
            identity = f"commit {commit}"
        elif weights is not None:
            identity = f"sha256 {_file_sha256(weights)[:16]}"
        else:
            identity = "unversioned"
        version = f"{identity}, cxr-vit {__version__}"
        return cls(model_reference(name_or_path), version, thresholds_source or cls.thresholds_source)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deterministic_uid(*parts: str) -> str:
    """``2.25.<UUID>`` (PS3.5 B.2) with a name-based UUID (version 5) of ``parts``: the same parts give the same
    UID. (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and returns a random one.)"""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, chr(31).join(parts)).int}"


def result_uid(source: Dataset, algorithm: AlgorithmInfo, *what: str) -> str:
    """A result's UID, fixed by the source instance, the algorithm and what the result is."""
    return deterministic_uid(str(source.SOPInstanceUID), algorithm.name, algorithm.version, *what)


def _series_uid(source: Dataset, algorithm: AlgorithmInfo, kind: str) -> str:
    """One result series per study, model and kind, so a study's films share their result series."""
    return deterministic_uid(str(source.StudyInstanceUID), algorithm.name, algorithm.version, kind)


def build_results(
    source: Dataset,
    probabilities: Sequence[float],
    thresholds: Sequence[float] | None,
    heatmaps: dict[str, np.ndarray] | None,
    algorithm: AlgorithmInfo,
    film: Image.Image | None = None,
) -> list[Dataset]:
    """The SR, then one overlay Secondary Capture per positive label that has a heatmap.

    Args:
        source: the film's dataset (with pixels when heatmaps are given).
        probabilities / thresholds: per label, in canonical order; without thresholds the SR holds no calls and
            no overlay is made.
        heatmaps: label -> map in ``[0, 1]`` over the whole film (any resolution, the film's aspect), e.g. from
            :func:`cxr_vit.dicom.film_heatmaps`; 0 (or NaN) leaves the film as it is.
        algorithm: the identification written into every object.
        film: the source as :func:`cxr_vit.data.images.dicom_to_gray` renders it, when the caller has it already
            (decoded once here otherwise, if an overlay is made).
    """
    probabilities = [float(p) for p in probabilities]
    source = _with_patient_and_study(source)
    if len(probabilities) != len(LABELS) or (thresholds is not None and len(thresholds) != len(LABELS)):
        raise ValueError(f"build_results needs one probability (and threshold) per label: {len(LABELS)}")
    positive = [p >= t for p, t in zip(probabilities, thresholds, strict=True)] if thresholds is not None else None
    results = [_structured_report(source, probabilities, thresholds, positive, algorithm)]
    for index, label in enumerate(LABELS):
        if positive and positive[index] and heatmaps and label in heatmaps:
            if film is None:
                film = dicom_to_gray(source, f"SOP Instance {source.SOPInstanceUID}")
            caption = f"{label} p={probabilities[index]:.2f} (threshold {thresholds[index]:.2f})"
            results.append(_overlay(source, film, index, heatmaps[label], caption, algorithm))
    return results


# Patient and General Study attributes of Type 2 (present, may be empty) that the results copy from the film.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _with_patient_and_study(source: Dataset) -> Dataset:
    """The film, with any of those attributes it lacks present and empty (their meaning when absent), so the
    results carry the film's patient and study as they are; the caller's dataset is left untouched."""
    missing = [keyword for keyword in _TYPE2_COPIED if keyword not in source]
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"the source DICOM has no {keyword}: results cannot be placed in its study")
    if not missing:
        return source
    filled = copy.copy(source)  # shallow: the pixel data is shared, not copied
    for keyword in missing:
        setattr(filled, keyword, "")
    return filled


def write_results(results: Sequence[Dataset], folder: str | os.PathLike) -> list[Path]:
    """Save each object as ``<folder>/<SOPInstanceUID>.dcm``, written then renamed, so a file there is whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_atomic(folder / f"{dataset.SOPInstanceUID}.dcm", partial(_save, dataset)) for dataset in results]


def _save(dataset: Dataset, path: Path) -> None:
    dataset.save_as(path, enforce_file_format=True)


def _structured_report(
    source: Dataset,
    probabilities: list[float],
    thresholds: Sequence[float] | None,
    positive: list[bool] | None,
    algorithm: AlgorithmInfo,
) -> Dataset:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid(source, algorithm, "device"),
        name=algorithm.name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.name[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = []
    for index, label in enumerate(LABELS):
        finding = FINDING_CODES[label]
        parameters = [f"thresholds: {algorithm.thresholds_source}", NOT_FOR_CLINICAL_USE]
        if algorithm.computed_in:
            parameters.insert(-1, f"computed in {algorithm.computed_in}")
        evaluations = None
        if thresholds is not None:
            parameters.insert(0, f"threshold {thresholds[index]:.6g}")
            evaluations = [hd.sr.QualitativeEvaluation(finding, PRESENT if positive[index] else ABSENT)]
        algorithm_id = hd.sr.AlgorithmIdentification(
            name=algorithm.name[:64], version=algorithm.version[:64], parameters=parameters, manufacturer=MANUFACTURER
        )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=result_uid(source, algorithm, "tracking", label), identifier=label
                ),
                finding_type=finding,
                algorithm_id=algorithm_id,
                measurements=[hd.sr.Measurement(name=PROBABILITY, value=probabilities[index], unit=NO_UNITS)],
                qualitative_evaluations=evaluations,
                source_images=[source_image],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[source] if _library_describes(source) else None,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=_series_uid(source, algorithm, "sr"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, algorithm, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
    )
    _declare_private_scheme(sr)
    return sr


def _library_describes(source: Dataset) -> bool:
    """Whether the film has what TID 1600's Image Library entry for a projection radiograph needs (highdicom
    requires Patient Orientation and Imager Pixel Spacing); without it the library is left out and the film is
    referenced from each measurement group only."""
    return bool(source.get("PatientOrientation")) and bool(source.get("ImagerPixelSpacing"))


def _declare_private_scheme(dataset: Dataset) -> None:
    """The Coding Scheme Identification Sequence that a private scheme designator must have (PS3.3 C.12.1)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    dataset.CodingSchemeIdentificationSequence = DicomSequence([item])


def _overlay(
    source: Dataset, film: Image.Image, index: int, heatmap: np.ndarray, caption: str, algorithm: AlgorithmInfo
) -> Dataset:
    """A Secondary Capture of the film (shrunk to ``OVERLAY_MAX_SIDE``) with the heatmap and caption burned in."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(film.size))
    film = film.resize((max(1, round(film.width * scale)), max(1, round(film.height * scale))), Image.BICUBIC)
    pixels = burn_in(film, heatmap, [caption, f"cxr-vit heatmap, {NOT_FOR_CLINICAL_USE}"])
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "F"),  # highdicom wants one it knows; replaced below by the film's
        series_instance_uid=_series_uid(source, algorithm, "overlay"),
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, algorithm, "overlay", LABELS[index]),
        instance_number=index + 1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        series_description=OVERLAY_SERIES_DESCRIPTION,
    )
    # The film's rows and columns keep their directions through the resize; empty (Type 2: unknown) if it has none.
    image.PatientOrientation = source.get("PatientOrientation", "")
    image.Laterality = source.get("Laterality", "")  # Type 2C for a paired part: the film's, or unknown
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.BurnedInAnnotation = "YES"
    image.DerivationDescription = f"heatmap of {LABELS[index]} by {algorithm.name} {algorithm.version}"[:1024]
    computed = f", computed in {algorithm.computed_in}" if algorithm.computed_in else ""
    image.ImageComments = f"{caption}; {algorithm.name} {algorithm.version}{computed}; {NOT_FOR_CLINICAL_USE}"[:10240]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = DicomSequence([reference])
    return image


def burn_in(film: Image.Image, heatmap: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """RGB pixels: the captions on a black band above the film (which hides none of it), then the grayscale film
    with the heatmap in colour where it is above 0, more opaque where higher."""
    import matplotlib

    heat = np.nan_to_num(np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0))
    heat = np.asarray(Image.fromarray(heat, mode="F").resize(film.size, Image.BILINEAR), dtype=np.float32)
    base = np.asarray(film.convert("RGB"), dtype=np.float32) / 255.0
    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    weight = (_OVERLAY_ALPHA * heat)[..., None]
    blended = Image.fromarray(np.uint8(np.clip((1 - weight) * base + weight * colours, 0, 1) * 255 + 0.5), "RGB")
    line = max(12, round(film.height * _CAPTION_HEIGHT))
    canvas = Image.new("RGB", (film.width, film.height + line * len(captions)), "black")
    canvas.paste(blended, (0, line * len(captions)))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, line * 3 // 4))
    for index, caption in enumerate(captions):
        draw.text((4, index * line + line // 2), caption, fill="white", font=font, anchor="lm")
    return np.asarray(canvas)
