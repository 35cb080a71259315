"""Box list reading, box geometry from the released image to the model input, pointing game and IoU / IoBB."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cxr_vit.constants import LABELS
from cxr_vit.data.nih import NIHDataError
from cxr_vit.evaluation.localization import (
    BBOX_LABELS,
    BOXED_FINDINGS,
    WANG_2017,
    box_mask,
    box_to_input,
    detected_boxes,
    iobb,
    iou,
    localization_markdown,
    localization_summary,
    pointing_hit,
    read_bbox_csv,
    resized_size,
    score_box,
)

EXCERPT = Path(__file__).resolve().parent / "data" / "bbox_excerpt.csv"
FULL_LIST = Path(__file__).resolve().parent / "data" / "BBox_List_2017.csv.gz"  # NIH's whole box list, gzipped


# ---- reading ---------------------------------------------------------------------------------------------


def test_excerpt_keeps_the_release_format():
    lines = EXCERPT.read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert lines[1] == (
        "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661"
    )


def test_read_real_excerpt():
    boxes = read_bbox_csv(EXCERPT)
    assert list(boxes.columns) == ["image_id", "label", "x", "y", "w", "h", "csv_line"]
    assert len(boxes) == 32
    assert set(boxes["label"]) == set(BOXED_FINDINGS)
    assert "Infiltrate" not in set(boxes["label"])
    first = boxes.iloc[0]
    assert first["image_id"] == "00013118_008.png" and first["label"] == "Atelectasis" and first["csv_line"] == 2
    assert (first["x"], first["y"], first["w"], first["h"]) == (
        225.084745762712,
        547.019216763771,
        86.7796610169491,
        79.1864406779661,
    )
    assert (boxes["image_id"] == "00005066_030.png").sum() == 3  # one image, three findings boxed


def test_gzipped_copy_reads_the_same(tmp_path):
    packed = tmp_path / "BBox_List_2017.csv.gz"
    packed.write_bytes(gzip.compress(EXCERPT.read_bytes()))
    assert read_bbox_csv(packed).equals(read_bbox_csv(EXCERPT))


def test_full_release():
    boxes = read_bbox_csv(FULL_LIST)
    assert len(boxes) == 984 and boxes["image_id"].nunique() == 880
    assert boxes["label"].value_counts()["Infiltration"] == 123  # the release spells it "Infiltrate"
    rows = ["image_id", "label", "x", "y", "w", "h"]
    excerpt = read_bbox_csv(EXCERPT)[rows]
    assert len(excerpt.merge(boxes[rows])) == len(excerpt)  # the excerpt's rows are the release's


def test_label_map_covers_exactly_the_eight_boxed_findings():
    assert set(BBOX_LABELS.values()) <= set(LABELS)
    assert BOXED_FINDINGS == tuple(WANG_2017["findings"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("00000001_000.png,Infiltration,1,2,3,4", "unknown finding 'Infiltration'"),
        ("00000001_000.png,Mass,1,2,3,4,5", "expected 6 values"),
        ("00000001_000.png,Mass,1,2,3", "expected 6 values"),
        ("00000001_000.png,Mass,1,2,x,4", "not four numbers"),
        ("00000001_000.png,Mass,1,2,0,4", "positive width"),
    ],
)
def test_bad_rows_are_reported_with_their_line(tmp_path, row, message):
    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000002_000.png,Mass,1,2,3,4\n" + row + "\n")
    with pytest.raises(NIHDataError, match=message) as error:
        read_bbox_csv(path)
    assert "line 3" in str(error.value)


def test_other_csv_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("Image Index,Finding Labels,Follow-up #\n00000001_000.png,Mass,0\n")
    with pytest.raises(NIHDataError, match="header"):
        read_bbox_csv(path)


# ---- geometry --------------------------------------------------------------------------------------------


def test_box_to_input_square_prepared_image():
    # S = floor(64 / 0.9) = 71; the 256 px image becomes 71x71; crop offset int(round(3.5)) = 4; scale 71/1024.
    box = box_to_input((512, 256, 128, 64), image_size=(256, 256), input_size=64, crop_pct=0.9)
    x1, y1 = 640 * 71 / 1024 - 4, 320 * 71 / 1024 - 4
    assert box == pytest.approx((31.5, 13.75, x1 - 31.5, y1 - 13.75))
    assert box == pytest.approx((31.5, 13.75, 8.875, 4.4375))
    # The prepared size only matters through the resize: a 1024 px prepared image gives the same box.
    assert box_to_input((512, 256, 128, 64), image_size=(1024, 1024), input_size=64, crop_pct=0.9) == pytest.approx(box)


def test_box_to_input_non_square_prepared_image_and_clipping():
    # 300x200 prepared: shorter side 200 -> 71, longer int(71 * 300 / 200) = 106; offsets (21, 4).
    assert resized_size(300, 200, 71) == (106, 71)
    box = box_to_input((100, 200, 300, 400), image_size=(300, 200), input_size=64, crop_pct=0.9)
    x1 = 400 * 106 / 1024 - 21  # x0 = 100 * 106 / 1024 - 21 < 0: clipped to 0
    y0, y1 = 200 * 71 / 1024 - 4, 600 * 71 / 1024 - 4
    assert box == pytest.approx((0.0, y0, x1, y1 - y0))
    outside = box_to_input((1000, 10, 20, 20), image_size=(300, 200), input_size=64, crop_pct=0.9)
    assert outside[0] == 64 and outside[2] == 0


def test_resized_size_matches_torchvision():
    from PIL import Image
    from torchvision.transforms import functional

    for width, height in [(300, 200), (200, 300), (256, 256), (1024, 997)]:
        image = Image.new("L", (width, height))
        assert functional.resize(image, 71).size == resized_size(width, height, 71)


def test_box_to_input_matches_timms_eval_transform():
    """Paint the box into a non-square prepared image, run timm's eval transform, find it again."""
    import timm.data
    from PIL import Image

    width, height = 300, 200
    image = np.zeros((height, width), dtype=np.uint8)
    image[50:150, 120:210] = 255  # the box in prepared pixels
    box_released = (120 * 1024 / width, 50 * 1024 / height, 90 * 1024 / width, 100 * 1024 / height)
    transform = timm.data.create_transform(
        input_size=(3, 64, 64), crop_pct=0.9, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)
    )
    seen = transform(Image.fromarray(image).convert("RGB"))[0].numpy() > 0.5
    rows, columns = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    x, y, w, h = box_to_input(box_released, image_size=(width, height), input_size=64, crop_pct=0.9)
    assert abs(columns[0] - x) <= 1 and abs(columns[-1] + 1 - (x + w)) <= 1
    assert abs(rows[0] - y) <= 1 and abs(rows[-1] + 1 - (y + h)) <= 1


def test_box_mask_uses_pixel_centres():
    mask = box_mask((1.0, 2.0, 2.0, 1.0), (5, 5))
    assert np.argwhere(mask).tolist() == [[2, 1], [2, 2]]


# ---- scores ----------------------------------------------------------------------------------------------


def test_pointing_game():
    heatmap = np.zeros((8, 8))
    heatmap[2, 5] = 1.0
    assert pointing_hit(heatmap, (4, 1, 3, 3))
    assert not pointing_hit(heatmap, (0, 0, 3, 3))
    assert not pointing_hit(np.full((8, 8), 0.3), (0, 0, 8, 8))  # constant map: no evidence, no hit
    heatmap[7, 7] = 1.0  # a tied maximum outside the box
    assert not pointing_hit(heatmap, (4, 1, 3, 3))


def test_iou_and_iobb_by_hand():
    truth, detected = (5.0, 4.0, 4.0, 4.0), (3.0, 2.0, 4.0, 4.0)
    assert iou(truth, detected) == pytest.approx(4 / 28)
    assert iobb(truth, detected) == pytest.approx(4 / 16)
    # IoBB divides by the detected box: a small box inside a large finding scores 1, its IoU does not.
    assert iobb((0, 0, 10, 10), (2, 2, 2, 2)) == 1.0
    assert iou((0, 0, 10, 10), (2, 2, 2, 2)) == pytest.approx(0.04)
    assert iou((0, 0, 2, 2), (5, 5, 1, 1)) == 0.0 and iobb((0, 0, 2, 2), (5, 5, 1, 1)) == 0.0


def test_detected_boxes_at_both_wang_thresholds():
    heatmap = np.zeros((10, 10))
    heatmap[2:6, 3:7] = 1.0  # strong region: found at 60/255 and at 180/255
    heatmap[7:9, 7:9] = 0.5  # weak region: only at 60/255
    assert sorted(detected_boxes(heatmap)) == [(3.0, 2.0, 4.0, 4.0), (3.0, 2.0, 4.0, 4.0), (7.0, 7.0, 2.0, 2.0)]
    # Diagonal neighbours form one region (8-connectivity).
    diagonal = np.eye(4)
    assert detected_boxes(diagonal, thresholds=(0.5,)) == [(0.0, 0.0, 4.0, 4.0)]


def test_score_box_takes_the_best_detected_box():
    heatmap = np.zeros((10, 10))
    heatmap[2:6, 3:7] = 1.0
    heatmap[7:9, 7:9] = 0.5
    weak = score_box(heatmap, (7.0, 7.0, 2.0, 2.0))
    assert weak == {"pointing_hit": False, "iou": 1.0, "iobb": 1.0, "n_detected": 3}
    strong = score_box(heatmap, (5.0, 4.0, 4.0, 4.0))
    assert strong["pointing_hit"] is False  # the tied maxima cover all of the 4x4 block, not only the box
    assert strong["iou"] == pytest.approx(4 / 28)  # from the strong region's box (3, 2, 4, 4)
    # The best IoBB comes from the weak region's small box, half inside the GT box: 2 / 4.
    assert strong["iobb"] == pytest.approx(0.5)
    assert score_box(heatmap, (64.0, 3.0, 0.0, 5.0))["iou"] == 0.0  # a box clipped away by the crop


def test_summary_per_finding_and_overall():
    scores = [
        {"label": "Mass", "pointing_hit": True, "iou": 0.45, "iobb": 0.8},
        {"label": "Mass", "pointing_hit": False, "iou": 0.05, "iobb": 0.1},
        {"label": "Nodule", "pointing_hit": True, "iou": 0.2, "iobb": 0.3},
        {"label": "Effusion", "pointing_hit": False, "iou": 0.0, "iobb": 0.0},
    ]
    summary = localization_summary(scores)
    mass, overall = summary["findings"]["Mass"], summary["overall"]
    assert mass["n_boxes"] == 2 and mass["pointing_accuracy"] == 0.5
    assert mass["iou_accuracy"]["0.1"] == 0.5 and mass["iou_accuracy"]["0.5"] == 0.0
    assert mass["iobb_accuracy"]["0.1"] == 1.0 and mass["iobb_accuracy"]["0.75"] == 0.5
    assert overall["n_boxes"] == 4 and overall["iou_accuracy"]["0.2"] == 0.5  # >= : 0.2 counts at 0.2
    assert overall["mean_iobb"] == pytest.approx(0.3)
    assert summary["findings"]["Cardiomegaly"]["n_boxes"] == 0
    assert summary["findings"]["Cardiomegaly"]["pointing_accuracy"] is None
    assert list(summary["findings"]) == list(BOXED_FINDINGS)
    json.dumps(summary, allow_nan=False)
    markdown = localization_markdown(summary)
    # By default only Table 4 stands beside ours: the one table checked against two copies of the paper.
    assert "| Overall | 4 | 0.500 |" in markdown and "0.7277" not in markdown and "| Atelectasis | 0.728 |" in markdown
    assert "IoBB>0.25 Wang" in markdown and "Table 4" in markdown and "Unverified" not in markdown
    single_copy = localization_markdown(summary, reference="chestxray14_iobb")
    assert "Table 19" in single_copy and "**Unverified transcription**" in single_copy
    with pytest.raises(ValueError, match="Hernia"):
        localization_summary([{"label": "Hernia", "pointing_hit": True, "iou": 1.0, "iobb": 1.0}])


def test_published_tables_are_well_formed():
    for table in WANG_2017["tables"].values():
        assert [float(key) for key in table["accuracy"]] == sorted(float(key) for key in table["accuracy"])
        rows = np.array(list(table["accuracy"].values()))
        assert rows.shape[1] == len(BOXED_FINDINGS)
        # Accuracy cannot grow with a stricter threshold: a transcription slip would likely break this.
        assert (np.diff(rows, axis=0) <= 0).all()
        assert ((rows >= 0) & (rows <= 1)).all()


def test_model_input_geometry_of_a_tiny_model():
    from cxr_vit.evaluation.localization import model_input_geometry
    from cxr_vit.modeling import create_model

    model = create_model("vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs={"depth": 1})
    assert model_input_geometry(model) == (64, 0.9)
