"""A checkpoint's processor files, checked before torch is imported.

What a checkpoint directory's processor files can be found wrong from alone, in well under a second: no
image processor beside the tokenizer, a settings file that is not JSON, a ``tokenizer.json`` the
``tokenizers`` library cannot read or that lacks the model's image token, and a chat template that renders
a user turn with an image exactly as one without (it drops the image), and a ``processor_class`` that
transformers does not have. The template is rendered by
transformers' own renderer (``transformers.utils.chat_template_utils``, which imports no torch). Whatever
needs the processor built (``AutoProcessor``) or the model is checked after, by
``fl_sim.models.prompts.CheckpointPrompter`` and ``fl_sim.device.model_cache.prompter_for``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fl_sim import FlSimError, one_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
                  "preprocessor_config.json", "processor_config.json")


def has_own_processor(path: str | Path) -> bool:
    """Whether the checkpoint directory carries its own tokenizer (and so its own processor)."""
    return any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def _settings(path: Path) -> dict[str, dict]:
    out = {}
    for name in SETTINGS_FILES:
        f = path / name
        if not f.is_file():
            continue
        try:
            value = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FlSimError(f"{path}: {name} does not parse as JSON ({one_line(exc)})") from None
        if not isinstance(value, dict):
            raise FlSimError(f"{path}: {name} is not a JSON object")
        out[name] = value
    return out


def chat_template(path: Path, settings: dict[str, dict]) -> str | None:
    """The checkpoint's default chat template, from wherever transformers keeps it: ``chat_template.jinja``,
    ``chat_template.json``, or the processor's or tokenizer's settings (a string, or named templates)."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        t = settings.get(name, {}).get("chat_template")
        if isinstance(t, list):  # named templates
            named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
            t = named.get("default") or next(iter(named.values()), None)
        if isinstance(t, dict):
            t = t.get("default") or next(iter(t.values()), None)
        if isinstance(t, str) and t:
            return t
    return None


def _is_transformers_class(name) -> bool:
    import transformers

    # the lazy module's own index of its classes (dir() as a fallback, slower): nothing is imported
    names = getattr(transformers, "_class_to_module", None) or dir(transformers)
    return isinstance(name, str) and name in names


def _renders_image(template: str) -> bool | None:
    """Whether ``template`` renders a user turn with an image differently from the same turn without it;
    ``None`` when it does not render here (the processor's own rendering decides later)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    text = {"type": "text", "text": "what is shown?"}
    try:
        out = [render_jinja_template([[{"role": "user", "content": c}]], chat_template=template,
                                     add_generation_prompt=True)[0]
               for c in ([{"type": "image"}, text], [text])]
    except Exception:  # noqa: BLE001 - a template needing the processor's own variables: checked when it is built
        return None
    return out[0] != out[1]


def check_processor_files(path: str | Path, image_token_id: int | None) -> None:
    """The processor files of the checkpoint directory ``path`` (which has its own tokenizer), as far as
    they can be read without building the processor; one ``FlSimError`` starting with the path otherwise.
    ``image_token_id``: the model's image token (``config.json``)."""
    path = Path(path)
    if not any((path / f).is_file() for f in IMAGE_PROCESSOR_FILES):
        raise FlSimError(f"{path}: a tokenizer but no image processor (preprocessor_config.json or "
                         "processor_config.json); save the model's processor (AutoProcessor) beside it")
    settings = _settings(path)
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the tokenizer does not load
            raise FlSimError(f"{path}: tokenizer.json does not load ({one_line(exc)})") from None
        size = tok.get_vocab_size(with_added_tokens=True)
        if image_token_id is not None and not 0 <= int(image_token_id) < size:
            raise FlSimError(f"{path}: the model's image token id {image_token_id} is not in its tokenizer "
                             f"({size} tokens)")
    for name, values in settings.items():
        cls = values.get("processor_class")
        if cls is not None and not _is_transformers_class(cls):
            import transformers

            raise FlSimError(f"{path}: {name} names processor_class {cls!r}, which transformers "
                             f"{transformers.__version__} does not have")
    template = chat_template(path, settings)
    if template is not None and _renders_image(template) is False:
        raise FlSimError(f"{path}: its chat template renders no image in a user turn with an image")
