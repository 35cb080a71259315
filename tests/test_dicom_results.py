"""DICOM results: ``predict.py --dicom_output`` writes, per DICOM film, a TID 1500 SR whose probabilities are the
CSV's and whose calls follow the stored thresholds, and a heatmap overlay per positive finding, both in the film's
study, valid by dcmtk's ``dsrdump`` and dicom3tools' ``dciodvfy``, under UIDs that a second run reproduces.

The films are real NIH images stored as 12-bit DICOM (one of them RLE-compressed, one non-square); the model is the
tiny random-init one of ``tests/conftest.py``, whose stored thresholds make Effusion, and only it, positive.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import MINI_IMAGES, REPO
from inference_helpers import load_script
from PIL import Image
from pydicom import uid
from xray_files import to_bits, write_dicom

from cxr_vit.constants import LABELS
from cxr_vit.dicom import FINDING_CODES, AlgorithmInfo, algorithm_info, build_results, film_heatmaps
from cxr_vit.dicom.codes import ABSENT, PRESENT, PROBABILITY
from cxr_vit.prediction import Predictor

pytestmark = pytest.mark.no_hf_floor

XRAY = Path(__file__).resolve().parent / "data" / "00000011_000.png"
LABEL_OF_CODE = {(code.value, code.scheme_designator): label for label, code in FINDING_CODES.items()}
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "P-0042", "PatientBirthDate": "19700101", "PatientSex": "F"}
STUDY = {"StudyDate": "20260101", "StudyTime": "101010", "StudyID": "S1", "AccessionNumber": "A-7"}


def _film(path: Path, grey: np.ndarray, study_uid: str, **options) -> Path:
    write_dicom(path, to_bits(grey, 12), **options)
    ds = pydicom.dcmread(path)
    for keyword, value in {**PATIENT, **STUDY, "StudyInstanceUID": study_uid}.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    """Two DX films of one study (one RLE, one with the orientation an image library entry needs), one film
    without a Study Instance UID (predicted, but no results can be placed), and a PNG."""
    folder = tmp_path_factory.mktemp("films")
    study = uid.generate_uid()
    chest = np.asarray(Image.open(XRAY))[:200]  # 256 wide, 200 high: the model's crop is not the whole film
    small = np.asarray(Image.open(sorted(MINI_IMAGES.glob("*.png"))[0]))
    files = {
        "wide": _film(folder / "wide.dcm", chest, study, transfer_syntax=uid.RLELossless),
        "small": _film(folder / "IM0002", small, study),
        "no study": folder / "nostudy.dcm",
        "png": folder / "plain.png",
    }
    ds = pydicom.dcmread(files["small"])
    ds.PatientOrientation, ds.ImagerPixelSpacing = ["A", "FR"], [0.5, 0.5]  # a compound direction, as in rotated films
    ds.save_as(files["small"])
    ds = pydicom.dcmread(_film(files["no study"], small, study))
    del ds.StudyInstanceUID
    ds.save_as(files["no study"])
    shutil.copy(XRAY, files["png"])
    return files


@pytest.fixture(scope="module")
def predicted(model_dir, films, tmp_path_factory) -> tuple[pd.DataFrame, Path, int, str]:
    """predict.py --dicom_output on the films' folder: (CSV rows by path, the results folder, exit code, what it
    printed)."""
    out = tmp_path_factory.mktemp("predicted")
    main = load_script(REPO / "scripts" / "predict.py").main
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(printed):
        code = main(
            ["--model", str(model_dir), str(films["wide"].parent), "--output", str(out / "p.csv")]
            + ["--dicom_output", str(out / "dicom"), "--device", "cpu"]
        )
    rows = pd.read_csv(out / "p.csv", keep_default_na=False).set_index("path")
    rows.attrs["csv"] = str(out / "p.csv")
    return rows, out / "dicom", code, printed.getvalue()


def _results(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """Result objects by Modality (SR, OT for the overlays), each checked to be saved under its SOP Instance UID."""
    found: dict[str, list[pydicom.Dataset]] = {"SR": [], "OT": []}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        found[ds.Modality].append(ds)
    return found


def _content_items(item: pydicom.Dataset):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _content_items(child)


def _groups(sr: pydicom.Dataset) -> dict[str, tuple[float, str | None, str]]:
    """label -> (probability NUM, the call's code value or None, the referenced image's SOP Instance UID)."""
    groups = {}
    for item in _content_items(sr):
        if item.ValueType != "CONTAINER" or item.ConceptNameCodeSequence[0].CodeMeaning != "Measurement Group":
            continue
        children = list(item.ContentSequence)
        finding = next(c for c in children if c.ConceptNameCodeSequence[0].CodeMeaning == "Finding")
        concept = finding.ConceptCodeSequence[0]
        label = LABEL_OF_CODE[(concept.CodeValue, concept.CodingSchemeDesignator)]
        number = next(c for c in children if c.ValueType == "NUM")
        assert number.ConceptNameCodeSequence[0].CodeValue == PROBABILITY.value
        calls = [
            c.ConceptCodeSequence[0].CodeValue
            for c in children
            if c.ValueType == "CODE" and c.ConceptNameCodeSequence[0].CodeValue == concept.CodeValue
        ]
        image = next(c for c in children if c.ValueType == "IMAGE").ReferencedSOPSequence[0]
        probability = float(number.MeasuredValueSequence[0].NumericValue)
        groups[label] = (probability, calls[0] if calls else None, image.ReferencedSOPInstanceUID)
    return groups


def test_predict_writes_an_sr_and_an_overlay_per_dicom_film_in_its_study(predicted, films):
    rows, folder, code, printed = predicted
    assert code == 1  # the film without a study got its CSV row but no results, and is named
    named = f"no DICOM results for 1 file(s):\n  {films['no study']}: no DICOM results written: the source DICOM"
    assert f"{named} has no StudyInstanceUID" in printed
    assert "wrote 4 predictions" in printed and "4 DICOM results in" in printed and "Traceback" not in printed
    assert set(rows.index) == {str(path) for path in films.values()}
    results = _results(folder)
    assert len(results["SR"]) == 2 and len(results["OT"]) == 2  # 2 films with a study; Effusion positive in each
    sources = {str(path): pydicom.dcmread(path) for key, path in films.items() if key in ("wide", "small")}
    by_source = {}
    for sr in results["SR"]:
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        by_source[evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID] = sr
    for path, source in sources.items():
        sr = by_source[source.SOPInstanceUID]
        assert sr.SOPClassUID == uid.Comprehensive3DSRStorage
        assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName, sr.AccessionNumber) == (
            source.StudyInstanceUID,
            source.PatientID,
            source.PatientName,
            source.AccessionNumber,
        )
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID and "NOT FOR CLINICAL USE" in sr.SeriesDescription
        groups = _groups(sr)
        assert list(groups) == list(LABELS)
        for label, (probability, call, image) in groups.items():
            assert probability == pytest.approx(rows.loc[path, label], abs=1e-4), label
            assert call == (PRESENT if label == "Effusion" else ABSENT).value, label
            assert image == source.SOPInstanceUID
    assert len({sr.SeriesInstanceUID for sr in results["SR"]}) == 1  # one result series per study and model
    precision = json.loads(Path(f"{rows.attrs['csv']}.json").read_text())["precision"]  # predict.py's own record
    texts = [item.TextValue for item in _content_items(results["SR"][0]) if item.ValueType == "TEXT"]
    assert any(text.startswith(f"computed in {precision} on ") for text in texts), texts
    by_uid = {source.SOPInstanceUID: source for source in sources.values()}
    for overlay in results["OT"]:
        source = by_uid[overlay.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert overlay.StudyInstanceUID == source.StudyInstanceUID and overlay.PatientID == source.PatientID
        assert overlay.PatientOrientation == source.get("PatientOrientation", "")
        assert overlay.SOPClassUID == uid.SecondaryCaptureImageStorage and overlay.BurnedInAnnotation == "YES"
        assert list(overlay.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert "NOT FOR CLINICAL USE" in overlay.SeriesDescription and "Effusion" in overlay.ImageComments
        assert f"computed in {precision} on " in overlay.ImageComments
        rows, columns, samples = overlay.pixel_array.shape  # the film, with the captions' band above it
        assert (columns, samples) == (source.Columns, 3) and rows > source.Rows
    assert len({overlay.SeriesInstanceUID for overlay in results["OT"]}) == 1


def test_results_pass_dciodvfy_and_dsrdump(predicted):
    folder = predicted[1]
    for tool in ("dciodvfy", "dsrdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian package {'dicom3tools' if tool == 'dciodvfy' else 'dcmtk'})")
    for path in sorted(folder.iterdir()):
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
        if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SR":
            dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
            assert dump.returncode == 0 and not [line for line in dump.stderr.splitlines() if line.startswith("E:")]
            assert '"Probability"' in dump.stdout and '"NOT FOR CLINICAL USE"' in dump.stdout
            assert dump.stdout.count('CONTAINER:(,,"Measurement Group")') == len(LABELS)


def test_result_uids_depend_only_on_the_film_and_the_model(films, model_dir):
    source = pydicom.dcmread(films["small"])
    probabilities, thresholds = np.linspace(0.1, 0.9, len(LABELS)), np.full(len(LABELS), 0.5)
    heatmaps = {label: np.ones((8, 8)) for label in ("Atelectasis", "Pneumothorax")}
    algorithm = AlgorithmInfo.for_model(model_dir, thresholds_source="set by the test")
    first = build_results(source, probabilities, thresholds, heatmaps, algorithm)
    assert len(first) == 2  # the SR and the one positive label with a heatmap (Pneumothorax, 0.9)
    again = build_results(pydicom.dcmread(films["small"]), probabilities, thresholds, heatmaps, algorithm)
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in first]
    assert [ds.SeriesInstanceUID for ds in again] == [ds.SeriesInstanceUID for ds in first]
    other_calls = build_results(source, probabilities[::-1], thresholds, heatmaps, algorithm)  # Atelectasis now
    assert other_calls[0].SOPInstanceUID == first[0].SOPInstanceUID  # one SR per film and model, whatever it says
    assert other_calls[1].SOPInstanceUID != first[1].SOPInstanceUID  # an overlay per finding
    retrained = AlgorithmInfo(algorithm.name, algorithm.version + " (retrained)", algorithm.thresholds_source)
    other = build_results(source, probabilities, thresholds, heatmaps, retrained)
    assert not {ds.SOPInstanceUID for ds in first} & {ds.SOPInstanceUID for ds in other}
    assert "sha256" in algorithm.version and algorithm.name == model_dir.name  # no local path in the results


def test_without_thresholds_the_sr_holds_probabilities_only(films):
    source = pydicom.dcmread(films["wide"])
    results = build_results(source, np.full(len(LABELS), 0.7), None, None, AlgorithmInfo("m", "1"))
    assert len(results) == 1
    groups = _groups(results[0])
    assert all(call is None and probability == pytest.approx(0.7) for probability, call, _ in groups.values())


def test_film_heatmaps_cover_the_models_crop_of_the_film(predictor):
    film = Image.fromarray(np.asarray(Image.open(XRAY))[:200])  # 256 x 200: the crop is the central 200 x 200
    maps = film_heatmaps(predictor, film, ["Effusion", "Mass"])
    assert set(maps) == {"Effusion", "Mass"}
    for heat in maps.values():
        assert heat.shape == (200, 256) and 0 <= heat.min() and heat.max() <= 1
        assert not heat[:, :28].any() and not heat[:, -28:].any()  # outside the model's crop
        assert heat[:, 28:-28].any()
    assert not np.array_equal(maps["Effusion"], maps["Mass"])


def test_the_algorithm_is_named_without_local_paths(predictor, model_dir, tmp_path):
    thresholds = tmp_path / "chosen" / "thresholds.json"
    thresholds.parent.mkdir()
    thresholds.write_text(json.dumps({"thresholds": dict.fromkeys(LABELS, 0.3), "rule": "Youden on validation"}))
    info = algorithm_info(Predictor(predictor.model, "cpu", thresholds_file=thresholds), model_dir, thresholds)
    assert info.name == model_dir.name and "thresholds.json: Youden on validation" in info.thresholds_source
    assert str(tmp_path) not in f"{info}" and str(model_dir.parent) not in f"{info}"
