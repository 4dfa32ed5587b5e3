"""The zoo's processor: fl-sim's word tokenizer, an image processor and a chat template, as a ``LlavaProcessor``.

Every zoo checkpoint directory carries it, so the fleet reads the zoo's models the way it reads any
checkpoint with its own processor (``fl_sim.models.prompts``). It reproduces ``mllm.Prompter`` exactly:

- the chat template renders one user turn as ``<bos> question <image> <sep>`` (the question before the
  image, which small models learn far more easily), and the processor expands ``<image>`` to the tower's
  nine visual tokens;
- the image processor keeps the size (one 16-pixel patch per grid cell) and maps uint8 ``x`` to
  ``(x / 255 - 0.5) / 0.5``, bit-identical to ``Prompter.pixels``'s ``x / 127.5 - 1`` (a test checks
  every byte value).

The PIL backend is named because the default one needs torchvision, which fl-sim does not install.
"""

from __future__ import annotations

from pathlib import Path

from fl_sim.world.tokenizer import IMAGE, SEP

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %} " + IMAGE + "{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'user' %} " + SEP + " {% else %} {{ eos_token }} {% endif %}"
    "{% endfor %}"
)


def build_processor(tokenizer, image_size: int, patch_size: int):
    """A ``LlavaProcessor`` around the shared word ``tokenizer`` for a tower taking ``image_size`` pixels
    in ``patch_size`` patches (one visual token per patch, no CLS)."""
    from transformers import LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    images = SiglipImageProcessorPil(do_resize=False, size={"height": image_size, "width": image_size},
                                     do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                          patch_size=patch_size, vision_feature_select_strategy="full", image_token=IMAGE,
                          num_additional_image_tokens=0)


def save_processor(folder: str | Path, tokenizer, vision_config) -> None:
    """Write the zoo's processor into the checkpoint directory ``folder`` (its tower: ``vision_config``)."""
    build_processor(tokenizer, vision_config.image_size, vision_config.patch_size).save_pretrained(folder)
