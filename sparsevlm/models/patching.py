"""What every family adapter shares besides the stage loop: the mixins swapped onto the top-level
and multimodal models (generate, loss, copies, where the visual tokens are), the hooks that capture
queries and keys, and installing and removing all of it."""
from __future__ import annotations

import copy
import warnings

import torch

from . import compat
from .state import ModelState


def check_one_device(model) -> None:
    """Raise if the model's modules run on more than one device (a `device_map` across GPUs): the
    staged decoder keeps the shortened sequence's layout on the device the prompt starts on.
    Offloading is fine: accelerate runs modules mapped to "cpu" or "disk" on the main device."""
    placed = getattr(model, "hf_device_map", None)
    if placed:
        devices = {str(d) for d in placed.values()} - {"cpu", "disk"}
    else:
        devices = {str(p.device) for p in model.parameters()} - {"meta"}
    if len(devices) > 1:
        raise ValueError(f"model runs on several devices ({', '.join(sorted(devices))}; its device_map splits it): "
                         f"a pruned prefill keeps the shortened sequence on one device. Load the model on one "
                         f"device (device_map={{'': 0}}; offloading to 'cpu' or 'disk' is fine)")


class SparseTop:
    """Mixin for the model `generate` is called on: the parts of `generate` and of the loss that
    see the whole call, and copying.

    - `generate(prefill_chunk_size=k)` with a prompt longer than k runs dense (said in the report):
      pruning needs the whole prompt in one forward.
    - Assisted generation (`assistant_model=`, `prompt_lookup_num_tokens=`): its first forward holds
      the prompt and the assistant's first draft. The prompt's length is kept for the call, so that the
      staged decoder prunes the prompt alone and takes the draft as a first decoding step: the same
      decisions as without an assistant.
    - A right-padded prompt runs dense (said in the report): `generate` reads its last position, a
      padding token, and a pruned prefill returns zeros at padding positions.
    - `labels=`: outputs are aligned with the input positions; a position whose token was pruned
      predicts nothing, so its next label is left out of the loss (the seam: `loss_function`). With
      keep-all, every position (padding included) is the dense model's, and so is the loss.
    """

    def generate(self, *args, **kwargs):
        call = self._sparsevlm.call()
        config = kwargs.get("generation_config") or self.generation_config

        def option(name):
            return kwargs[name] if name in kwargs else getattr(config, name, None)

        chunk = option("prefill_chunk_size")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if chunk and (ids is None or ids.shape[-1] > chunk):
            call.dense_reason = (f"generate(prefill_chunk_size={chunk}) splits the prompt into chunks; pruning "
                                    f"needs the whole prompt in one forward")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not mask[:, -1].all():
            call.dense_reason = ("generate() on a right-padded prompt reads its last position, a padding token, "
                                    "which a pruned prefill leaves empty (pad on the left: padding_side='left')")
        if option("use_cache") is False:
            warnings.warn("generate(use_cache=False) with a sparsified model prunes again at every step, with the "
                          "tokens generated so far among the raters: answers differ from the cached run, and nothing "
                          "is saved", stacklevel=2)
        prompt = ids if ids is not None else kwargs.get("inputs_embeds")
        assisted = kwargs.get("assistant_model") is not None or option("prompt_lookup_num_tokens") or \
            option("assistant_early_exit")
        before = call.prompt_len  # (a sparsified model may be its own assistant: its generate nests)
        call.prompt_len = prompt.shape[1] if assisted and prompt is not None else None
        try:
            return super().generate(*args, **kwargs)
        finally:
            call.dense_reason = None
            call.prompt_len = before

    @property
    def loss_function(self):
        base, call = super().loss_function, self._sparsevlm.call()

        def loss(logits, labels, *args, **kwargs):
            present = call.present  # set by this forward's prefill; None when it ran dense
            if present is not None and labels is not None:
                labels = labels.clone()
                labels[:, 1:][~present[:, :-1].to(labels.device)] = -100  # a pruned position predicts nothing
            return base(logits, labels, *args, **kwargs)
        return loss

    def __deepcopy__(self, memo):
        from . import sparsify, unsparsify

        st = self._sparsevlm
        cfg, last = st.cfg, st.call().report
        unsparsify(self)  # copy the dense model, then sparsify both: the copy gets its own state and hooks
        try:
            twin = copy.deepcopy(self, memo)
        finally:
            sparsify(self, cfg)
            self._sparsevlm.call().report = last
        return sparsify(twin, cfg)

    def save_pretrained(self, *args, **kwargs):
        """Saves the dense model (sparsifying changes no weight) under its own class name, which
        transformers writes into config.json as `architectures` for loaders that read it; sparsify
        again after loading. (The class is swapped back while saving, as `unsparsify` would.)"""
        sparse = type(self)
        self.__class__ = sparse._sparsevlm_original
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = sparse

    def __reduce_ex__(self, protocol):
        raise TypeError(f"a sparsified {type(self).__name__} cannot be pickled (its classes are made by sparsify): "
                        f"save model.state_dict() or model.save_pretrained(path), and call "
                        f"sparsevlm.sparsify after loading")


class SparsePlaceholders:
    """Mixin for the multimodal model: `get_placeholder_mask` (where image and video features are
    spliced in) records which positions hold visual tokens, images and video alike."""

    def get_placeholder_mask(self, *args, **kwargs):
        mask = super().get_placeholder_mask(*args, **kwargs)  # one mask, or (image, video) masks
        vis = mask[0][..., 0] | mask[1][..., 0] if isinstance(mask, tuple) else mask[..., 0]  # (B, L)
        call = self._sparsevlm.call()
        call.vis_mask = vis
        if isinstance(mask, tuple) and self._sparsevlm.method.needs_spans:
            call.frames = self._frames(mask[1][..., 0])
        self._placed(vis)
        return mask

    def _placed(self, vis: torch.Tensor) -> None:
        """Called with the visual positions (B, L); a family may attach per-token signals."""

    def _frames(self, video: torch.Tensor) -> torch.Tensor | None:
        """The video frame of each position (B, L), −1 off video, for per-frame budgets; None where the
        positions tell the frames already (M-RoPE's temporal position)."""
        return None


def swap_class(module, mixin) -> None:
    cls = type(module)
    # The original's name: transformers looks classes up by name (weight renaming on load, output recording).
    module.__class__ = type(cls.__name__, (mixin, cls), {"_sparsevlm_original": cls, "__module__": cls.__module__,
                                                          "__qualname__": cls.__qualname__})
    compat.register_output_recording(module.__class__, cls)


def hook_queries_keys(text, method, state: ModelState, attentions: dict) -> None:
    """Capture each pruning layer's queries and keys (as the attention uses them, RoPE applied: "q",
    "k", (B, H, L, Dh) and (B, H_kv, L, Dh)) and, for a method that reads them, its keys before RoPE
    ("raw_k", (B, L, H_kv·Dh), a forward hook) into the call's `capture` (set by the staged decoder
    around the layer)."""
    attn = next(layer.self_attn for layer in text.layers if hasattr(layer, "self_attn"))  # (hybrids: not layer 0)
    module = compat.attention_module(attn, attentions)
    compat.wrap_rope(module)
    state.rope_module = module
    for i in method.pruning_layers if method.needs_raw_keys else ():
        def hook(_mod, _inp, out):
            captured = state.call().capture
            if captured is not None:  # (a k_norm's output is per head, (B, L, H_kv, Dh): heads concatenated)
                captured["raw_k"] = out.flatten(2)
        keys_at = compat.keys_before_rope(text.layers[i].self_attn, attentions)
        state.hooks.append(keys_at.register_forward_hook(hook))


def install(model, method, state: ModelState, top, multimodal, family) -> None:
    """Attach the shared state to the model, its multimodal model and its text model, swap in the
    sparse classes (`top`, `multimodal`, and the staged decoder for the text model) and hook the
    pruning layers' queries and keys. The family has checked `method` first."""
    from .staged import SparseTextModel

    text = model.model.language_model
    state.family = family
    for module, mixin in ((model, top), (model.model, multimodal), (text, SparseTextModel)):
        module._sparsevlm = state
        swap_class(module, mixin)
    hook_queries_keys(text, method, state, family.ATTENTIONS)


def unpatch(model) -> None:
    """Remove the hooks, restore the original classes, drop the state."""
    state = getattr(model, "_sparsevlm", None)
    if state is None:
        return
    for h in state.hooks:
        h.remove()
    if state.rope_module is not None:
        compat.unwrap_rope(state.rope_module)
    for m in (model, model.model, model.model.language_model):
        if hasattr(type(m), "_sparsevlm_original"):
            m.__class__ = type(m)._sparsevlm_original
        m.__dict__.pop("_sparsevlm", None)
