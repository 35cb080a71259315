"""Every script answers an unknown or misspelt flag as argparse does: its usage, one line, exit 2."""

import logging
import runpy
import sys

import pytest
from conftest import REPO

SCRIPTS = sorted((REPO / "scripts").glob("*.py")) + [REPO / "app.py"]
# What each script requires, so that the unknown flag is what the parser stops at.
REQUIRED = {
    "calibrate.py": ["--model", "m", "--dataset_name", "d", "--output_dir", "o"],
    "dicom_node.py": ["--model", "m", "--allowed_ae", "A", "--destination", "h:1:B", "--output_dir", "o"],
    "dicomweb_predict.py": ["--url", "u", "--model", "m", "--study", "1.2", "--output", "o"],
    "compare_encoders.py": ["--encoders", "a.yaml", "b.yaml", "--dataset_name", "d", "--num_train_epochs", "1"],
    "download_nih.py": ["--output_dir", "o"],
    "evaluate.py": ["--model", "m", "--dataset_name", "d", "--output_dir", "o"],
    "external_validation.py": ["--model", "m", "--dataset_name", "d", "--output_dir", "o"],
    "export_inductor.py": ["--model", "m", "--output_dir", "o", "--calibration_dataset", "d"],
    "export_onnx.py": ["--model", "m", "--output_dir", "o"],
    "predict.py": ["x.png", "--model", "m", "--output", "o"],
    "prepare_data.py": ["--images_dir", "i", "--labels_csv", "l", "--output_dir", "o"],
    "push_to_hub.py": ["--model_dir", "m", "--repo_id", "r"],
    "reproduce.py": ["--data_dir", "d"],
}


@pytest.fixture
def keep_logging():
    """The scripts configure the root logger as they start; give it back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_the_list_of_required_flags_names_only_scripts_that_exist():
    assert set(REQUIRED) <= {script.name for script in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_an_unknown_flag_ends_in_the_usage_and_one_line(script, monkeypatch, capsys, keep_logging):
    monkeypatch.setattr(sys, "argv", [str(script), *REQUIRED.get(script.name, []), "--bogus"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("usage: ") and "Traceback" not in "\n".join(lines)
    assert lines[-1] == f"{script.name}: error: unrecognized arguments: --bogus"
