"""Small copies of four other hospitals' releases in their native layouts, made from planted NIH films.

``make_fixture(source, root)`` writes a few dozen real NIH films (``data/nih_mini``, 64 px) as the release ships them
(CheXpert: JPEG under ``CheXpert-v1.0-small/{train,valid}/patientN/studyN/viewN_frontal.jpg`` with ``train.csv`` /
``valid.csv``; MIMIC-CXR-JPG: JPEG under ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` with the chexpert, metadata and
split CSVs; PadChest: 16-bit PNGs in ``ImageDir`` folders with the 160K label CSV; VinDr-CXR: DICOM under
``train/`` and ``test/`` with ``annotations/image_labels_{train,test}.csv``, three readers per training image), with
the release's own column headers. Each positive native label carries the planted grating (:mod:`planted`) of the NIH
finding(s) it stands for, so a model trained on planted NIH data scores high on every mapped label and a wrong
mapping falls to chance.

The table :data:`PLANTED_AS` is written here independently of ``cxr_vit.label_map`` on purpose: the fixtures are the
truth the map is tested against.

Returns a dict: ``source``, ``images_dir``, ``labels_csv`` (and ``metadata_csv``, ``split_csv`` for MIMIC; the second
label file as ``test_labels_csv`` for CheXpert and VinDr), ``args`` (the ``scripts/prepare_data.py`` arguments without
``--output_dir``), ``films`` (number of image files), ``planted`` (image id as prepared -> the NIH findings whose
grating the film carries) and ``native`` (image id -> its positive native labels; for VinDr the readers' majority).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from planted import draw_gratings
from xray_files import to_bits, write_dicom, write_png16

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "data" / "nih_mini"

SOURCES = ("chexpert", "mimic_cxr", "padchest", "vindr_cxr")

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)  # fmt: skip
CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
MIMIC_LABELS = tuple(sorted(CHEXPERT_LABELS))  # mimic-cxr-2.0.0-chexpert.csv lists them alphabetically
MIMIC_METADATA_HEADER = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_HEADER = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
)  # fmt: skip
VINDR_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other diseases", "No finding",
)  # fmt: skip

# Native label -> the NIH findings whose grating a positive film carries (exact, synonym or approximate: all planted,
# so every label the map can produce is learnable). Native labels not listed here are drawn without any grating.
# Approximations are planted only where the NIH label they approximate is not annotated without them (CheXpert's
# Lung Lesion, say), so that by default the planted findings are exactly the prepared positives.
_CHEXPERT_PLANTED = {
    "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Consolidation": ("Consolidation",),
    "Edema": ("Edema",), "Pleural Effusion": ("Effusion",), "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",), "Lung Lesion": ("Mass", "Nodule"), "Lung Opacity": ("Infiltration",),
    "Pleural Other": ("Pleural_Thickening",),
}  # fmt: skip
PLANTED_AS: dict[str, dict[str, tuple[str, ...]]] = {
    "chexpert": _CHEXPERT_PLANTED,
    "mimic_cxr": _CHEXPERT_PLANTED,
    "padchest": {
        "atelectasis": ("Atelectasis",), "cardiomegaly": ("Cardiomegaly",), "consolidation": ("Consolidation",),
        "pulmonary edema": ("Edema",), "pleural effusion": ("Effusion",), "emphysema": ("Emphysema",),
        "pulmonary fibrosis": ("Fibrosis",), "hiatal hernia": ("Hernia",), "infiltrates": ("Infiltration",),
        "mass": ("Mass",), "nodule": ("Nodule",), "pleural thickening": ("Pleural_Thickening",),
        "pneumonia": ("Pneumonia",), "pneumothorax": ("Pneumothorax",),
    },
    "vindr_cxr": {
        "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Consolidation": ("Consolidation",),
        "Edema": ("Edema",), "Emphysema": ("Emphysema",), "Infiltration": ("Infiltration",),
        "Pleural effusion": ("Effusion",), "Pleural thickening": ("Pleural_Thickening",),
        "Pneumothorax": ("Pneumothorax",), "Pulmonary fibrosis": ("Fibrosis",), "Pneumonia": ("Pneumonia",),
        "Nodule/Mass": ("Mass", "Nodule"),
    },
}  # fmt: skip
# Drawn without a grating (only on films that have a planted finding, so "no finding" stays grating-free).
UNPLANTED = {
    "chexpert": ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"),
    "mimic_cxr": ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"),
    "padchest": ("aortic elongation", "scoliosis", "calcified granuloma"),  # real PadChest terms cxr-vit does not map
    "vindr_cxr": ("Aortic enlargement", "Calcification", "Other lesion", "Lung Opacity"),
}
PREVALENCE = 0.3
UNCERTAIN = 0.1  # CheXpert / MIMIC: share of the other entries written as -1.0 (no grating)
READER_NOISE = 0.15  # VinDr: chance that one of three readers disagrees with the other two


def _mini_films(count: int, seed: int) -> list[np.ndarray]:
    names = sorted(path.name for path in (MINI / "images").glob("*.png"))
    chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return [np.asarray(Image.open(MINI / "images" / names[i]).convert("L")) for i in sorted(chosen)]


class _Drawer:
    """Draws native labels for one source and plants the matching gratings."""

    def __init__(self, source: str, seed: int):
        self.source, self.rng = source, np.random.default_rng(seed)
        self.planted_as, self.unplanted = PLANTED_AS[source], UNPLANTED[source]

    def draw(self) -> dict[str, int]:
        """native label -> 1 / 0 / -1 (uncertain: CheXpert and MIMIC only) for one study."""
        values = {label: int(self.rng.random() < PREVALENCE) for label in self.planted_as}
        any_positive = any(values.values())
        for label in self.unplanted:
            values[label] = int(any_positive and self.rng.random() < PREVALENCE)
        if self.source in ("chexpert", "mimic_cxr"):
            for label in list(values):
                if values[label] == 0 and self.rng.random() < UNCERTAIN:
                    values[label] = -1
        return values

    def findings(self, values: dict[str, int]) -> list[str]:
        planted = {target for label, targets in self.planted_as.items() if values.get(label) == 1 for target in targets}
        return sorted(planted)

    def film(self, pixels: np.ndarray, findings: list[str]) -> np.ndarray:
        return draw_gratings(pixels, findings, self.rng)


def _positives(values: dict[str, int]) -> list[str]:
    return sorted(label for label, value in values.items() if value == 1)


def _chexpert_value(value: int, rng: np.random.Generator) -> str:
    if value == 1:
        return "1.0"
    if value == -1:
        return "-1.0"
    return "0.0" if rng.random() < 0.5 else ""  # a negative is written as 0.0 or left blank ("not mentioned")


def _no_finding(values: dict[str, int]) -> int:
    return int(not any(value == 1 for label, value in values.items() if label != "Support Devices"))


def make_chexpert(root: Path, count: int = 40, seed: int = 0) -> dict:
    """CheXpert-v1.0-small: 32 training films of 12 patients (frontal and lateral) and 8 validation films."""
    release = root / "CheXpert-v1.0-small"
    drawer, films = _Drawer("chexpert", seed), _mini_films(count, seed)
    rows = {"train": [], "valid": []}
    planted, native = {}, {}
    patient, study, view = 0, 0, 0
    for index, pixels in enumerate(films):
        split = "valid" if index >= count - 8 else "train"
        if split == "valid":  # one frontal film per validation patient, numbered after the training patients
            patient, study, view, new_study = 64541 + index - (count - 8), 0, 0, True
        elif index == 0 or drawer.rng.random() < 0.35:
            patient, study, new_study = patient + 1, 0, True
        else:
            new_study = drawer.rng.random() < 0.5
        if study == 0:
            sex = str(drawer.rng.choice(["Male", "Female", "Unknown"], p=[0.45, 0.45, 0.1]))
            age = int(drawer.rng.integers(18, 90))
        if new_study:
            study, view = study + 1, 0
            values = drawer.draw()
            findings = drawer.findings(values)
        view += 1
        lateral = view > 1 and drawer.rng.random() < 0.5
        name = f"view{view}_{'lateral' if lateral else 'frontal'}.jpg"
        relative = f"{release.name}/{split}/patient{patient:05d}/study{study}/{name}"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawer.film(pixels, findings)).save(path, quality=95)
        planted[relative] = findings
        native[relative] = _positives(values)
        csv_values = {label: _chexpert_value(values.get(label, 0), drawer.rng) for label in CHEXPERT_LABELS}
        csv_values["No Finding"] = "1.0" if _no_finding(values) else ""
        if split == "valid":  # the expert-labelled validation set has no blanks and no uncertain labels
            csv_values = {label: "1.0" if v == "1.0" else "0.0" for label, v in csv_values.items()}
        rows[split].append(
            {
                "Path": relative,
                "Sex": sex,
                "Age": str(age),
                "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                "AP/PA": "" if lateral else str(drawer.rng.choice(["AP", "PA"])),
                **csv_values,
            }
        )
    for split, split_rows in rows.items():
        pd.DataFrame(split_rows, columns=list(CHEXPERT_HEADER)).to_csv(release / f"{split}.csv", index=False)
    return _result(
        "chexpert", root, release / "train.csv", planted, native, count, test_labels_csv=release / "valid.csv"
    )


def make_mimic_cxr(root: Path, count: int = 40, seed: int = 0) -> dict:
    """MIMIC-CXR-JPG 2.0.0: 40 films of 10 subjects, two films per study, the official split CSV (24 / 8 / 8 films)."""
    drawer, films = _Drawer("mimic_cxr", seed), _mini_films(count, seed)
    label_rows, metadata_rows, split_rows, planted, native = [], [], [], {}, {}
    subject, study_id, split = 10000000, 50000000, "train"
    for index, pixels in enumerate(films):
        if index % 4 == 0:  # four films per subject, two per study; subjects go to train, validate, test 3:1:1
            subject += int(drawer.rng.integers(1, 999_999))
            split = ("train", "train", "validate", "train", "test")[index // 4 % 5]
        if index % 2 == 0:
            study_id += int(drawer.rng.integers(1, 99_999))
            values = drawer.draw()
            findings = drawer.findings(values)
            row = {"subject_id": subject, "study_id": study_id}
            for label in MIMIC_LABELS:
                value = values.get(label, 0)
                row[label] = {1: "1.0", -1: "-1.0"}.get(value, "0.0" if drawer.rng.random() < 0.5 else "")
            row["No Finding"] = "1.0" if _no_finding(values) else ""
            label_rows.append(row)
        dicom_id = "-".join(f"{int(v):08x}" for v in drawer.rng.integers(0, 2**32, size=5))
        view = str(drawer.rng.choice(["PA", "AP", "LATERAL"], p=[0.4, 0.4, 0.2]))
        path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study_id}" / f"{dicom_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawer.film(pixels, findings)).save(path, quality=95)
        planted[dicom_id] = findings
        native[dicom_id] = _positives(values)
        metadata_rows.append(
            {
                "dicom_id": dicom_id, "subject_id": subject, "study_id": study_id,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view, "Rows": 64,
                "Columns": 64, "StudyDate": 21800506, "StudyTime": 213014.531,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": "lateral" if view == "LATERAL" else "postero-anterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            }
        )  # fmt: skip
        split_rows.append({"dicom_id": dicom_id, "study_id": study_id, "subject_id": subject, "split": split})
    labels_csv = root / "mimic-cxr-2.0.0-chexpert.csv"
    pd.DataFrame(label_rows, columns=["subject_id", "study_id", *MIMIC_LABELS]).to_csv(labels_csv, index=False)
    metadata_csv = root / "mimic-cxr-2.0.0-metadata.csv"
    pd.DataFrame(metadata_rows, columns=list(MIMIC_METADATA_HEADER)).to_csv(metadata_csv, index=False)
    split_csv = root / "mimic-cxr-2.0.0-split.csv"
    pd.DataFrame(split_rows).to_csv(split_csv, index=False)
    return _result(
        "mimic_cxr", root, labels_csv, planted, native, count, metadata_csv=metadata_csv, split_csv=split_csv
    )


def _digits(rng: np.random.Generator, count: int) -> str:
    return "".join(str(digit) for digit in rng.integers(0, 10, size=count))


def make_padchest(root: Path, count: int = 40, seed: int = 0) -> dict:
    """PadChest: 16-bit PNGs in ImageDir folders 0 and 1, 14 patients, labels as Python-list strings."""
    drawer, films = _Drawer("padchest", seed), _mini_films(count, seed)
    rows, planted, native = [], {}, {}
    patient = ""
    for index, pixels in enumerate(films):
        if index == 0 or drawer.rng.random() < 0.35:
            patient = _digits(drawer.rng, 36)
            birth = float(drawer.rng.integers(1925, 2000))
            sex = str(drawer.rng.choice(["M", "F"]))
        values = drawer.draw()
        findings = drawer.findings(values)
        labels = [label for label, value in values.items() if value == 1] or ["normal"]
        if index % 5 == 0:  # stray spaces: the reader must strip each term
            labels[0] = f" {labels[0]}"
        # named like the release's 20536686640136348236148679891455886468_k6ga29.png
        image_id = f"{_digits(drawer.rng, 38)}_{_digits(drawer.rng, 6)}.png"
        image_dir = index % 2
        path = root / str(image_dir) / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png16(path, to_bits(drawer.film(pixels, findings), 12), significant_bits=12)
        planted[image_id] = findings
        native[image_id] = _positives(values)
        projection = str(drawer.rng.choice(["PA", "L", "AP_horizontal"], p=[0.6, 0.25, 0.15]))
        row = dict.fromkeys(PADCHEST_HEADER, "")
        row.update(
            ImageID=image_id, ImageDir=image_dir, StudyDate_DICOM=str(20090000 + int(drawer.rng.integers(1, 8)) * 10000
            + 101), StudyID=f"study{index}", PatientID=patient, PatientBirth=birth, PatientSex_DICOM=sex,
            ViewPosition_DICOM="POSTEROANTERIOR" if projection == "PA" else "", Projection=projection,
            MethodProjection="Manual review of DICOM fields", Pediatric="No", Modality_DICOM="CR",
            BitsStored_DICOM=12, Rows_DICOM=64, Columns_DICOM=64, MethodLabel="Physician",
            Labels=str(labels), Localizations="[]",
        )  # fmt: skip
        rows.append(row)
    labels_csv = root / PADCHEST_CSV
    pd.DataFrame(rows, columns=list(PADCHEST_HEADER)).to_csv(labels_csv, index=False)
    return _result("padchest", root, labels_csv, planted, native, count)


def _readers(truth: int, rng: np.random.Generator) -> list[int]:
    """Three readers' 0/1 for one label whose majority is ``truth``; now and then one of them disagrees."""
    votes = [truth] * 3
    if rng.random() < READER_NOISE:
        votes[int(rng.integers(0, 3))] = 1 - truth
    return votes


def make_vindr_cxr(root: Path, count: int = 40, seed: int = 0) -> dict:
    """VinDr-CXR 1.0.0: 30 training DICOMs read by three radiologists each, 10 test DICOMs (consensus)."""
    drawer, films = _Drawer("vindr_cxr", seed), _mini_films(count, seed)
    train_rows, test_rows, planted, native = [], [], {}, {}
    for index, pixels in enumerate(films):
        split = "test" if index >= count - 10 else "train"
        values = drawer.draw()
        findings = drawer.findings(values)
        image_id = f"{int(drawer.rng.integers(0, 2**63)):016x}{int(drawer.rng.integers(0, 2**63)):016x}"
        path = root / split / f"{image_id}.dicom"
        path.parent.mkdir(parents=True, exist_ok=True)
        monochrome1 = index % 5 == 0  # VinDr ships both photometric interpretations
        film = drawer.film(pixels, findings)
        stored = to_bits(255 - film if monochrome1 else film, 14)
        write_dicom(path, stored, bits_stored=14, photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
        header = pydicom.dcmread(path)
        header.PatientSex, header.PatientAge = str(drawer.rng.choice(["M", "F", "O"])), f"{index + 30:03d}Y"
        header.ViewPosition = "PA"
        header.save_as(path, enforce_file_format=True)
        planted[image_id] = findings
        native[image_id] = _positives(values)
        truth = {label: values.get(label, 0) for label in VINDR_LABELS}
        truth["No finding"] = int(not any(truth.values()))
        if split == "test":
            test_rows.append({"image_id": image_id, **truth})
            continue
        votes = {label: _readers(value, drawer.rng) for label, value in truth.items()}
        readers = drawer.rng.choice(17, size=3, replace=False) + 1
        for position, reader in enumerate(readers):
            train_rows.append(
                {"image_id": image_id, "rad_id": f"R{reader}", **{k: v[position] for k, v in votes.items()}}
            )
    annotations = root / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = annotations / "image_labels_train.csv", annotations / "image_labels_test.csv"
    pd.DataFrame(train_rows, columns=["image_id", "rad_id", *VINDR_LABELS]).to_csv(train_csv, index=False)
    pd.DataFrame(test_rows, columns=["image_id", *VINDR_LABELS]).to_csv(test_csv, index=False)
    return _result("vindr_cxr", root, train_csv, planted, native, count, test_labels_csv=test_csv)


def _result(source: str, root: Path, labels_csv: Path, planted: dict, native: dict, films: int, **extra: Path) -> dict:
    args = ["--source", source, "--images_dir", str(root), "--labels_csv", str(labels_csv)]
    for name in ("metadata_csv", "split_csv"):
        if name in extra:
            args += [f"--{name}", str(extra[name])]
    return {
        "source": source, "images_dir": root, "labels_csv": labels_csv, "args": args, "films": films,
        "planted": planted, "native": native, **extra,
    }  # fmt: skip


_MAKERS = {
    "chexpert": make_chexpert,
    "mimic_cxr": make_mimic_cxr,
    "padchest": make_padchest,
    "vindr_cxr": make_vindr_cxr,
}


def make_fixture(source: str, root: Path, count: int = 40, seed: int = 0) -> dict:
    """Write ``source``'s fixture under ``root`` (emptied first) and return its paths and arguments (module doc)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return _MAKERS[source](root, count=count, seed=seed)
