"""The coded concepts of the DICOM results: one code per NIH label, and the few concepts of the report itself.

Standard codes where one means what the NIH label means: SNOMED CT (``SCT``) and DICOM's own (``DCM``); each was
checked against pydicom's copy of the DICOM code tables (``pydicom.sr.codedict``) or a published SNOMED CT table.
Where no standard code was verified (Hernia, Pleural_Thickening) or none fits ("No Finding" means "none of the 14
NIH findings", not "normal"), a private coding scheme, ``99CXRVIT``, defines the concept; DICOM reserves designators
starting ``99`` for such local schemes (PS3.16 section 8.2). The table in docs/dicom.md lists them all.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from ..constants import LABELS

PRIVATE_SCHEME = "99CXRVIT"
PRIVATE_SCHEME_NAME = "cxr-vit private concepts (docs/dicom.md)"

FINDING_CODES: dict[str, Code] = {
    "Atelectasis": Code("46621007", "SCT", "Atelectasis"),
    "Cardiomegaly": Code("287272002", "SCT", "Cardiomegaly"),
    "Consolidation": Code("95436008", "SCT", "Lung consolidation"),
    "Edema": Code("19242006", "SCT", "Pulmonary edema"),
    "Effusion": Code("60046008", "SCT", "Pleural effusion"),
    "Emphysema": Code("87433001", "SCT", "Pulmonary emphysema"),
    "Fibrosis": Code("112674009", "SCT", "Fibrosis"),
    "Hernia": Code("CXR-HERNIA", PRIVATE_SCHEME, "Hernia (NIH ChestX-ray14 label)"),
    "Infiltration": Code("112121", "DCM", "Infiltrate"),
    "Mass": Code("4147007", "SCT", "Mass"),
    "No Finding": Code("CXR-NOFINDING", PRIVATE_SCHEME, "None of the 14 NIH ChestX-ray14 findings"),
    "Nodule": Code("27925004", "SCT", "Nodule"),
    "Pleural_Thickening": Code("CXR-PLEURALTHICK", PRIVATE_SCHEME, "Pleural thickening (NIH ChestX-ray14 label)"),
    "Pneumonia": Code("233604007", "SCT", "Pneumonia"),
    "Pneumothorax": Code("36118008", "SCT", "Pneumothorax"),
}
assert tuple(FINDING_CODES) == LABELS, "one code per label, in the canonical order"

# The NUM's concept and unit: DCM "Probability", unitless (UCUM "1").
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
# The call at the stored threshold: the finding's code as the name, Present / Absent as the value.
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
# TID 1500's "Procedure Reported" (CID 100).
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
