"""How fl-sim runs each family of image-text-to-text model: one small adapter per ``model_type``.

Every family splits the same way, the way transformers' ``get_image_features`` does: a frozen vision
tower turns pixels into *visual tokens* (``tower_tokens``: ``(B, N, D_vision)``, the currency devices
upload and the cloud reads), and a trainable connector turns those into the ``M`` embeddings that fill
the prompt's image tokens (``image_embeds``: ``(B, M, D_lm)``). A model then runs from visual tokens
(``inputs``): input ids plus transformers' pre-encoded ``mm_encoder_outputs`` (LLaVA: the embeddings
scattered here, as fl-sim always did), with whatever extra inputs the family needs (Qwen2-VL's grid and
multimodal token types for M-RoPE, Gemma's token types).

What differs between families is the geometry:

====================  ==============================  ==========================================
family                tower tokens (N) per image      connector (N -> M)
====================  ==============================  ==========================================
llava                 patch grid (and the CLS token   per-token MLP (M = N)
                      with the "full" strategy)
idefics3 (SmolVLM)    patches of each sub-image       pixel shuffle, scale s (M = N / s^2)
qwen2_vl, qwen2_5_vl  patches, in 2x2 merge blocks    merger of each block (M = N / 4)
gemma3                patch grid                      average pool to a k x k grid (M = k^2)
llava_onevision       patches of the base view and    per-token MLP, laid out as the tile grid
                      any-resolution tiles            with a newline per row (M = N + rows)
====================  ==============================  ==========================================

``token_groups`` says which output embedding each visual token feeds (UTS scores tokens through the
connector with it). Every image the fleet feeds is ``IMAGE_SHAPE`` (square, one size), so a batch's
pixels are one tensor with the batch first, and a family rebuilds per-image extras (Qwen's grid) from
its shape. A ``model_type`` with no adapter here is refused in one line (``check``).
"""

from __future__ import annotations

import math

import torch

from fl_sim import FlSimError
from fl_sim.world.scenes import IMAGE_SHAPE


def base(model):
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _grid_boxes(n: int, top: float = 0.0, left: float = 0.0, size: float = 1.0) -> torch.Tensor:
    """``(n, 4)`` boxes of a square grid of ``n`` cells in row order over the square at ``(top, left)`` of
    side ``size`` (shares of the image)."""
    side = math.isqrt(n)
    if side * side != n and math.isqrt(n - 1) ** 2 == n - 1:  # a class token first (kept): the whole view
        return torch.cat([torch.tensor([[top, left, top + size, left + size]]), _grid_boxes(n - 1, top, left, size)])
    if side * side != n:
        raise FlSimError(f"{n} visual tokens are no square grid: fl-sim feeds square images")
    r, c = torch.arange(n) // side, torch.arange(n) % side
    cell = size / side
    return torch.stack([top + r * cell, left + c * cell, top + (r + 1) * cell, left + (c + 1) * cell], 1)


def _tiles_boxes(per: int, tiles: int, whole_first: bool) -> torch.Tensor:
    """Boxes of ``tiles`` views of ``per`` tokens each: a whole-image view (first or last) and a square grid
    of tiles (row order), each view a patch grid."""
    if tiles == 1:
        return _grid_boxes(per)
    side = math.isqrt(tiles - 1)
    if side * side != tiles - 1:
        raise FlSimError(f"{tiles - 1} image tiles are no square grid: fl-sim feeds square images")
    parts = [_grid_boxes(per, (t // side) / side, (t % side) / side, 1 / side) for t in range(tiles - 1)]
    whole = _grid_boxes(per)
    return torch.cat([whole, *parts] if whole_first else [*parts, whole])


def _module(root, path: str) -> torch.nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


class Family:
    """The default adapter: a model whose ``get_image_features`` returns the tower's tokens as
    ``last_hidden_state`` and the connector's output as ``pooler_output``."""

    model_types: tuple[str, ...] = ()
    tower: str = "vision_tower"  # under the inner model (``model.model``)
    connector: str = "multi_modal_projector"  # trains with the adapters (peft modules_to_save)

    def inner(self, model):
        return base(model).model

    def tower_module(self, model) -> torch.nn.Module:
        return _module(self.inner(model), self.tower)

    def connector_module(self, model) -> torch.nn.Module:
        return _module(self.inner(model), self.connector)

    def batch_pixels(self, pixel_values: torch.Tensor, n: int) -> torch.Tensor:
        """The image processor's ``pixel_values`` of ``n`` images as one tensor with the batch first."""
        return pixel_values

    def loaded(self, model) -> None:
        """Called on a model just loaded from its checkpoint."""

    def pixel_inputs(self, model, pixels: torch.Tensor) -> dict:
        """What ``get_image_features`` and ``model(...)`` take for a batch of ``pixels`` (batch first)."""
        return {"pixel_values": pixels}

    def tower_tokens(self, model, pixels: torch.Tensor) -> torch.Tensor:
        out = self.inner(model).get_image_features(**self.pixel_inputs(model, pixels), return_dict=True)
        return out.last_hidden_state.reshape(len(pixels), -1, out.last_hidden_state.shape[-1])

    def image_embeds(self, model, vis: torch.Tensor) -> torch.Tensor:
        return self.connector_module(model)(vis)

    def token_groups(self, model, n: int) -> torch.Tensor:
        """``(n,)``: the index of the output embedding each of ``n`` visual tokens feeds."""
        return torch.arange(n)

    def token_boxes(self, model, n: int) -> torch.Tensor:
        """``(n, 4)``: the region ``(top, left, bottom, right)`` of the image, as shares of its height and width,
        that each of ``n`` visual tokens encodes (the family's geometry: a patch grid by default)."""
        return _grid_boxes(n)

    def text_inputs(self, model, ids: torch.Tensor) -> dict:
        """Extra inputs the family reads from the token ids of a prompt."""
        return {}

    def step_inputs(self, model, position: int, ids: torch.Tensor) -> dict:
        """Extra inputs of one decoding step outside ``generate``: token ``ids`` (``(b, 1)``) at ``position``
        after a cached prompt and answer."""
        return {}

    def pooled(self, feats: torch.Tensor):
        """``(B, M, D)`` image embeddings as the family's ``get_image_features`` returns them (one per image)."""
        return tuple(feats)

    def inputs(self, model, ids: torch.Tensor, vis: torch.Tensor) -> dict:
        """``model(**inputs)`` keyword arguments that run ``model`` on token ``ids`` with the images given as
        visual tokens ``vis`` (gradients flow into the connector): transformers' pre-encoded images."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        encoded = BaseModelOutputWithPooling(pooler_output=self.pooled(self.image_embeds(model, vis)))
        return {"input_ids": ids, "mm_encoder_outputs": {"image": encoded}, **self.text_inputs(model, ids)}


class Llava(Family):
    """LLaVA: the tower's hidden states at ``vision_feature_layer`` (CLS dropped with the ``default``
    strategy), a per-token MLP projector, embeddings scattered into the image tokens here."""

    model_types = ("llava",)

    def loaded(self, model) -> None:
        # The tower's post-layernorm is unused (features are taken before it) and save_pretrained does not
        # store it; give it a fixed value so a reloaded model is bit-identical to a fresh one.
        post = getattr(model.model.vision_tower, "post_layernorm", None)
        if post is not None:
            post.reset_parameters()

    def tower_tokens(self, model, pixels: torch.Tensor) -> torch.Tensor:
        from fl_sim.models import placement

        llava = base(model)
        tower, cfg = llava.model.vision_tower, llava.config
        layer = cfg.vision_feature_layer
        if not isinstance(layer, int):
            raise FlSimError(f"vision_feature_layer = {layer!r}: fl-sim takes one feature layer (an int)")
        out = tower(placement.to_model(tower, pixels), output_hidden_states=True).hidden_states[layer]
        return out[:, 1:] if cfg.vision_feature_select_strategy == "default" else out

    def inputs(self, model, ids: torch.Tensor, vis: torch.Tensor) -> dict:
        llava = base(model)
        emb = llava.get_input_embeddings()(ids)
        feats = self.image_embeds(model, vis.to(emb.dtype)).to(emb.dtype)  # bf16 under autocast
        mask = (ids == llava.config.image_token_index).unsqueeze(-1).expand_as(emb)
        return {"inputs_embeds": emb.masked_scatter(mask, feats)}


class Idefics3(Family):
    """Idefics3 / SmolVLM: each image is cut into sub-images (plus a global one); every sub-image's
    patches are pixel-shuffled (``scale_factor``) into fewer, wider tokens and projected."""

    model_types = ("idefics3", "smolvlm")
    tower, connector = "vision_model", "connector"

    def batch_pixels(self, pixel_values: torch.Tensor, n: int) -> torch.Tensor:
        return pixel_values.reshape(n, -1, *pixel_values.shape[-3:])  # (images, sub-images, 3, H, W)

    def tower_tokens(self, model, pixels: torch.Tensor) -> torch.Tensor:
        inner = self.inner(model)
        b, k = pixels.shape[:2]
        flat = pixels.reshape(b * k, *pixels.shape[2:]).to(inner.dtype)
        grid = flat.shape[-1] // inner.config.vision_config.patch_size
        mask = torch.ones(b * k, flat.shape[-2] // inner.config.vision_config.patch_size, grid, dtype=torch.bool,
                          device=flat.device)
        h = inner.vision_model(pixel_values=flat, patch_attention_mask=mask).last_hidden_state
        return h.reshape(b, -1, h.shape[-1])

    def _per_sub(self, model) -> int:
        """Visual tokens of one sub-image (the tower's patch grid)."""
        cfg = self.inner(model).config.vision_config
        return (cfg.image_size // cfg.patch_size) ** 2

    def image_embeds(self, model, vis: torch.Tensor) -> torch.Tensor:
        per = self._per_sub(model)
        out = self.connector_module(model)(vis.reshape(-1, per, vis.shape[-1]))
        return out.reshape(len(vis), -1, out.shape[-1])

    def token_boxes(self, model, n: int) -> torch.Tensor:  # the tiles in row order, then the global view
        return _tiles_boxes(self._per_sub(model), n // self._per_sub(model), whole_first=False)

    def token_groups(self, model, n: int) -> torch.Tensor:
        per, s = self._per_sub(model), int(self.inner(model).config.scale_factor)
        side = math.isqrt(per)
        r, c = torch.arange(per) // side, torch.arange(per) % side
        within = (r // s) * (side // s) + c // s  # pixel shuffle keeps s x s windows together
        return torch.cat([within + i * (per // (s * s)) for i in range(n // per)])


class Qwen2VL(Family):
    """Qwen2-VL / Qwen2.5-VL: patches of a dynamic-resolution image, in 2x2 blocks that the merger turns
    into one token each; M-RoPE positions come from the image grid and the multimodal token types."""

    model_types = ("qwen2_vl", "qwen2_5_vl")
    tower, connector = "visual", "visual.merger"

    def _grid(self, model, pixels: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(pixels.shape[1])
        if side * side != pixels.shape[1]:
            raise FlSimError(f"{pixels.shape[1]} patches per image: fl-sim feeds square images")
        return torch.tensor([[1, side, side]] * len(pixels), device=pixels.device)

    def batch_pixels(self, pixel_values: torch.Tensor, n: int) -> torch.Tensor:
        return pixel_values.reshape(n, -1, pixel_values.shape[-1])  # the processor flattens every image's patches

    def pixel_inputs(self, model, pixels: torch.Tensor) -> dict:
        return {"pixel_values": pixels.reshape(-1, pixels.shape[-1]), "image_grid_thw": self._grid(model, pixels)}

    def tower_tokens(self, model, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.inner(model).visual
        out = visual(pixels.reshape(-1, pixels.shape[-1]).to(visual.dtype), grid_thw=self._grid(model, pixels))
        return out.last_hidden_state.reshape(len(pixels), -1, out.last_hidden_state.shape[-1])

    def image_embeds(self, model, vis: torch.Tensor) -> torch.Tensor:
        out = self.connector_module(model)(vis.reshape(-1, vis.shape[-1]))
        return out.reshape(len(vis), -1, out.shape[-1])

    def token_groups(self, model, n: int) -> torch.Tensor:
        return torch.arange(n) // self.inner(model).visual.spatial_merge_size ** 2

    def token_boxes(self, model, n: int) -> torch.Tensor:
        """Patches come block by block (``m x m`` blocks in row order, each block's patches in row order)."""
        m, side = self.inner(model).visual.spatial_merge_size, math.isqrt(n)
        i = torch.arange(n)
        block, within = i // (m * m), i % (m * m)
        rows = (block // (side // m)) * m + within // m
        cols = (block % (side // m)) * m + within % m
        return _grid_boxes(n)[rows * side + cols]

    def text_inputs(self, model, ids: torch.Tensor) -> dict:
        cfg = base(model).config
        n = int((ids[0] == cfg.image_token_id).sum())
        side = math.isqrt(n) * self.inner(model).visual.spatial_merge_size
        return {"mm_token_type_ids": (ids == cfg.image_token_id).int(),
                "image_grid_thw": torch.tensor([[1, side, side]] * len(ids), device=ids.device)}

    def step_inputs(self, model, position: int, ids: torch.Tensor) -> dict:
        # M-RoPE: a text token after the image sits at its index plus the shift the prompt's image made
        # (``rope_deltas``, kept by the model from the prompt it last read)
        delta = self.inner(model).rope_deltas
        pos = torch.full((3, len(ids), 1), position, device=ids.device)
        return {"position_ids": pos + (0 if delta is None else delta.reshape(1, -1, 1).to(ids.device))}


class Gemma3(Family):
    """Gemma 3: a SigLIP tower whose patch grid is average-pooled to ``mm_tokens_per_image`` tokens;
    image tokens attend to each other both ways (token types)."""

    model_types = ("gemma3",)

    def pooled(self, feats: torch.Tensor):
        return feats

    def token_groups(self, model, n: int) -> torch.Tensor:
        side, out = math.isqrt(n), math.isqrt(int(base(model).config.mm_tokens_per_image))
        k = side // out
        r, c = torch.arange(n) // side, torch.arange(n) % side
        return (r // k) * out + c // k

    def text_inputs(self, model, ids: torch.Tensor) -> dict:
        return {"token_type_ids": (ids == base(model).config.image_token_id).long()}


class LlavaOnevision(Family):
    """LLaVA-OneVision: the image as a base view plus any-resolution tiles (``image_grid_pinpoints``), each
    through the tower at ``vision_feature_layer``; the projector's tokens are laid out as the tile grid with
    a learned newline after every row (``pack_image_features``)."""

    model_types = ("llava_onevision",)

    def _sizes(self, n: int, device) -> torch.Tensor:
        return torch.tensor([IMAGE_SHAPE[:2]] * n, device=device)

    def pixel_inputs(self, model, pixels: torch.Tensor) -> dict:
        return {"pixel_values": pixels, "image_sizes": self._sizes(len(pixels), pixels.device)}

    def tower_tokens(self, model, pixels: torch.Tensor) -> torch.Tensor:
        inner, cfg = self.inner(model), base(model).config
        if not isinstance(cfg.vision_feature_layer, int):
            raise FlSimError(f"vision_feature_layer = {cfg.vision_feature_layer!r}: fl-sim takes one feature layer")
        b, k = pixels.shape[:2]
        h = inner.vision_tower(pixels.reshape(b * k, *pixels.shape[2:]).to(inner.vision_tower.dtype),
                               output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        h = h[:, 1:] if cfg.vision_feature_select_strategy == "default" else h
        return h.reshape(b, -1, h.shape[-1])

    def _tiles(self, model) -> int:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        cfg = base(model).config
        return image_size_to_num_patches(IMAGE_SHAPE[:2], cfg.image_grid_pinpoints, cfg.vision_config.image_size)

    def _pack(self, model, per_tile: torch.Tensor, n: int, newline: torch.Tensor) -> torch.Tensor:
        inner, cfg = self.inner(model), base(model).config
        packed, _ = inner.pack_image_features(torch.split(per_tile, self._tiles(model)),
                                              self._sizes(n, per_tile.device), image_newline=newline,
                                              vision_aspect_ratio=cfg.vision_aspect_ratio)
        return torch.stack(packed)  # every image the same size: the same layout

    def image_embeds(self, model, vis: torch.Tensor) -> torch.Tensor:
        per_tile = self.connector_module(model)(vis.reshape(len(vis) * self._tiles(model), -1, vis.shape[-1]))
        return self._pack(model, per_tile, len(vis), self.inner(model).image_newline)

    def token_boxes(self, model, n: int) -> torch.Tensor:  # the base view, then the tiles in row order
        tiles = self._tiles(model)
        return _tiles_boxes(n // tiles, tiles, whole_first=True)

    def token_groups(self, model, n: int) -> torch.Tensor:
        """Each tile token's place in the packed layout, found by packing the tokens' own indices."""
        index = torch.arange(n, dtype=torch.float64).reshape(self._tiles(model), -1, 1)
        packed = self._pack(model, index, 1, torch.full((1,), -1.0, dtype=torch.float64)).reshape(-1)
        at = (packed >= 0).nonzero().reshape(-1)  # newlines are -1
        tokens = packed[at]
        if not torch.equal(tokens, tokens.round()) or len(tokens) != n or len(tokens.unique()) != n:
            raise FlSimError("LLaVA-OneVision packs these images' tiles resized or unpadded: fl-sim feeds square "
                             "images whose tiles it keeps whole")
        groups = torch.zeros(n, dtype=torch.long)
        groups[tokens.long()] = at
        return groups


FAMILIES: dict[str, Family] = {t: f for f in (Llava(), Idefics3(), Qwen2VL(), Gemma3(), LlavaOnevision())
                               for t in f.model_types}


def supported() -> list[str]:
    return sorted(FAMILIES)


def family_of(model) -> Family:
    """The adapter of ``model``'s family (a transformers model, peft-wrapped or not)."""
    mtype = base(model).config.model_type
    if mtype not in FAMILIES:
        raise FlSimError(f"model type {mtype!r} is not supported; fl-sim runs {', '.join(supported())}")
    return FAMILIES[mtype]
