"""The datasets of one's own that experiments/ writes read as domains: textures-vqa (train/ and test/ image
folders, each with metadata.csv) converts with its own test split and its 33 answers."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "experiments" / "make_textures_vqa.py"


def test_textures_vqa_reads_as_a_domain_with_its_own_splits(tmp_path):
    from datasets import load_from_disk

    from fl_sim.config.experiment import UserDomainConfig
    from fl_sim.world import user_data

    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "tex"), "--images", "150"], check=True,
                   capture_output=True)
    folder = user_data.build("textures", UserDomainConfig(path=str(tmp_path / "tex"), question_type="kind"), 16,
                             str(tmp_path / "cache"))
    train, test = (load_from_disk(str(folder / s)) for s in ("train", "test"))
    assert len(test) and len(train) > 3 * len(test)
    assert set(test["family"]) == {"material", "colour", "count", "patch", "where", "same"}
    answers = set(train["answer"]) | set(test["answer"])
    assert len(answers) >= 30 and {"Marble.", "Teal.", "Three.", "Bottom right.", "Yes", "No"} <= answers
