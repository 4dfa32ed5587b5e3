"""The processor-file checks made before torch is imported (fl_sim/models/processor_files.py): every
family's own processor passes them, and each broken file is named in one line (the corpus in
tests/bad_inputs.py runs the same cases through the command line)."""

import json
import shutil
import subprocess
import sys

import pytest

from fl_sim import FlSimError
from fl_sim.models.processor_files import _renders_image, chat_template, check_processor_files


@pytest.mark.parametrize("family", ["clip-llama", "gemma3", "idefics3", "llava-onevision", "qwen2-vl"])
def test_every_familys_own_processor_passes(family_checkpoints, family):
    path = family_checkpoints[family]
    cfg = json.loads((path / "config.json").read_text())
    check_processor_files(path, cfg.get("image_token_index", cfg.get("image_token_id")))
    settings = {f: json.loads((path / f).read_text()) for f in ("tokenizer_config.json",) if (path / f).is_file()}
    assert _renders_image(chat_template(path, settings)) is True


def test_a_template_that_drops_the_image_is_named(family_checkpoints, tmp_path):
    path = shutil.copytree(family_checkpoints["qwen2-vl"], tmp_path / "ck")
    (path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'][-1]['text'] }}{% endfor %}")
    with pytest.raises(FlSimError, match="its chat template renders no image") as err:
        check_processor_files(path, None)
    assert str(err.value).startswith(f"{path}: ")


def test_a_template_that_does_not_render_here_is_left_to_the_processor():
    assert _renders_image("{{ raise_exception('needs the processor') }}") is None
    assert _renders_image("{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}") is None


def test_the_checks_import_no_torch(family_checkpoints):
    """What makes a processor refusal take well under 2 s: torch is never imported."""
    path = family_checkpoints["idefics3"]
    code = ("import sys, json, pathlib; from fl_sim.models.processor_files import check_processor_files; "
            f"p = pathlib.Path({str(path)!r}); c = json.loads((p / 'config.json').read_text()); "
            "check_processor_files(p, c.get('image_token_id', c.get('image_token_index'))); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
