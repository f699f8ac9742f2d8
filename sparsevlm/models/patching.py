"""What every family adapter shares besides the stage loop: the checks a text model must pass,
the per-call state, the mixins swapped onto the top-level and multimodal models (generate, loss,
copies, where the visual tokens are), and the hooks that capture queries and keys."""
from __future__ import annotations

import copy
import functools
import sys
import threading
import time
import warnings

import torch


#: attention modules known to rotate their queries and keys with their module's `apply_rotary_pos_emb`
#: (whose outputs are captured: the model's own queries and keys), with the submodule whose output is
#: the keys before RoPE; any other attention is refused rather than scored wrongly
ATTENTIONS = {"modeling_llama": "k_proj", "modeling_mistral": "k_proj", "modeling_qwen2": "k_proj",
              "modeling_qwen3": "k_norm", "modeling_qwen2_vl": "k_proj", "modeling_qwen2_5_vl": "k_proj"}


def per_call(state: dict) -> dict:
    """The part of a sparsified model's state that belongs to one call (image positions, captured
    queries and keys, the last report), kept per thread: one model may serve several threads."""
    local = state["local"]
    if not hasattr(local, "call"):
        local.call = {"report": None}
    return local.call


def text_unsupported_reason(text, supported: str) -> str | None:
    """Why the staged decoder cannot run `text` (None if it can)."""
    if not all(hasattr(text, a) for a in ("layers", "norm", "rotary_emb")):
        return f"text model {type(text).__name__} lacks layers/norm/rotary_emb; supported: {supported}"
    attn = text.layers[0].self_attn
    kind = type(attn).__module__.rsplit(".", 1)[-1]
    if kind not in ATTENTIONS or not hasattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb"):
        return (f"attention {type(attn).__name__} is not one whose queries and keys this library captures "
                f"(Llama, Mistral, Qwen2, Qwen3 with q/k norm, Qwen2-VL, Qwen2.5-VL); supported: {supported}")
    cfg = text.config
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(cfg, "sliding_window", None) is not None and not hasattr(cfg, "layer_types"):
        return (f"text model {type(text).__name__} uses sliding-window attention, whose cache crops itself; "
                f"supported: {supported} (set text_config.sliding_window=None)")
    return None


def check_layers(text, method) -> None:
    """Raise if the method's pruning layers do not exist in `text`."""
    n = text.config.num_hidden_layers
    bad = [i for i in method.pruning_layers if i >= n]
    if bad:
        raise ValueError(f"pruning_layers {list(method.pruning_layers)}: layers {bad} do not exist; "
                         f"this model has layers 0..{n - 1}")


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


#: the profiler range that marks the method's own work (counted by `sparsevlm bench --profile`)
METHOD_RANGE = "sparsevlm::method"


class Clock:
    """Marks a block as the method's own work: a profiler range, and its wall time added to the
    call's "overhead_s" when state["timing"] is set (synchronising CUDA around it)."""

    def __init__(self, st, device):
        self.st, self.call, self.device = st, per_call(st), device
        self.range = torch.profiler.record_function(METHOD_RANGE)

    def __enter__(self):
        self.range.__enter__()
        if self.st.get("timing"):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.t = time.perf_counter()

    def __exit__(self, *exc):
        if self.st.get("timing"):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.call["overhead_s"] = self.call.get("overhead_s", 0.0) + time.perf_counter() - self.t
        self.range.__exit__(*exc)
        return False


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
        call = per_call(self._sparsevlm)
        config = kwargs.get("generation_config") or self.generation_config

        def option(name):
            return kwargs[name] if name in kwargs else getattr(config, name, None)

        chunk = option("prefill_chunk_size")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if chunk and (ids is None or ids.shape[-1] > chunk):
            call["dense_reason"] = (f"generate(prefill_chunk_size={chunk}) splits the prompt into chunks; pruning "
                                    f"needs the whole prompt in one forward")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not mask[:, -1].all():
            call["dense_reason"] = ("generate() on a right-padded prompt reads its last position, a padding token, "
                                    "which a pruned prefill leaves empty (pad on the left: padding_side='left')")
        if option("use_cache") is False:
            warnings.warn("generate(use_cache=False) with a sparsified model prunes again at every step, with the "
                          "tokens generated so far among the raters: answers differ from the cached run, and nothing "
                          "is saved", stacklevel=2)
        prompt = ids if ids is not None else kwargs.get("inputs_embeds")
        assisted = kwargs.get("assistant_model") is not None or option("prompt_lookup_num_tokens") or \
            option("assistant_early_exit")
        before = call.get("prompt_len")  # (a sparsified model may be its own assistant: its generate nests)
        call["prompt_len"] = prompt.shape[1] if assisted and prompt is not None else None
        try:
            return super().generate(*args, **kwargs)
        finally:
            call.pop("dense_reason", None)
            call["prompt_len"] = before

    @property
    def loss_function(self):
        base, call = super().loss_function, per_call(self._sparsevlm)

        def loss(logits, labels, *args, **kwargs):
            present = call.get("present")  # set by this forward's prefill; None when it ran dense
            if present is not None and labels is not None:
                labels = labels.clone()
                labels[:, 1:][~present[:, :-1].to(labels.device)] = -100  # a pruned position predicts nothing
            return base(logits, labels, *args, **kwargs)
        return loss

    def __deepcopy__(self, memo):
        from . import sparsify, unsparsify

        st = self._sparsevlm
        cfg, last = st["cfg"], per_call(st)["report"]
        unsparsify(self)  # copy the dense model, then sparsify both: the copy gets its own state and hooks
        try:
            twin = copy.deepcopy(self, memo)
        finally:
            sparsify(self, cfg)
            per_call(self._sparsevlm)["report"] = last
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
        call = per_call(self._sparsevlm)
        call["vis_mask"] = vis
        if isinstance(mask, tuple) and self._sparsevlm["method"].needs_spans:
            call["frames"] = self._frames(mask[1][..., 0])
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
    try:  # transformers records outputs (output_attentions, ...) per class name: register ours like the original
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return
    # keyed by the class's name (transformers >= 5.23 derives that key from the model itself; a plain dict before)
    dict.__setitem__(_CAN_RECORD_REGISTRY, str(module.__class__), cls._can_record_outputs)


#: where this thread's rotary embeddings are being captured (a pruning layer's "capture"), or None
ROPE_CAPTURE = threading.local()
#: attention modules whose `apply_rotary_pos_emb` is wrapped -> how many sparsified models use it
_WRAPPED: dict = {}


def _wrap_rope(module) -> None:
    """Wrap `module.apply_rotary_pos_emb` so that, while a pruning layer runs, its outputs (the
    queries and keys the attention uses) are kept: no op is added, nothing is recomputed."""
    if module in _WRAPPED:
        _WRAPPED[module] += 1
        return
    original = module.apply_rotary_pos_emb

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, *args, **kwargs):
        out = original(q, k, *args, **kwargs)
        slot = getattr(ROPE_CAPTURE, "slot", None)
        if slot is not None:
            slot["q"], slot["k"] = out
        return out

    apply_rotary_pos_emb._sparsevlm_original = original
    _WRAPPED[module] = 1
    module.apply_rotary_pos_emb = apply_rotary_pos_emb


def _unwrap_rope(module) -> None:
    """One model fewer uses the wrapper; the last one puts the original back."""
    if module in _WRAPPED:
        _WRAPPED[module] -= 1
        if _WRAPPED[module] == 0:
            module.apply_rotary_pos_emb = module.apply_rotary_pos_emb._sparsevlm_original
            del _WRAPPED[module]


def hook_queries_keys(text, method, state: dict) -> None:
    """Capture each pruning layer's queries and keys (as the attention uses them, RoPE applied: "q",
    "k", (B, H, L, Dh) and (B, H_kv, L, Dh)) and, for a method that reads them, its keys before RoPE
    ("raw_k", (B, L, H_kv·Dh), a forward hook) into the call's "capture" (set by the staged decoder
    around the layer)."""
    module = sys.modules[type(text.layers[0].self_attn).__module__]
    _wrap_rope(module)
    state["rope_module"] = module
    for i in method.pruning_layers if method.needs_raw_keys else ():
        attn = text.layers[i].self_attn

        def hook(_mod, _inp, out):
            captured = per_call(state).get("capture")
            if captured is not None:
                captured["raw_k"] = out
        keys_at = getattr(attn, ATTENTIONS[type(attn).__module__.rsplit(".", 1)[-1]])
        state["hooks"].append(keys_at.register_forward_hook(hook))


def install(model, method, state: dict, top, multimodal) -> None:
    """Attach the shared state to the model, its multimodal model and its text model, swap in the
    sparse classes (`top`, `multimodal`, and the staged decoder for the text model) and hook the
    pruning layers' queries and keys. The family has checked `method` first."""
    from .staged import SparseTextModel

    text = model.model.language_model
    state.setdefault("hooks", [])
    state["local"] = threading.local()
    for module, mixin in ((model, top), (model.model, multimodal), (text, SparseTextModel)):
        module._sparsevlm = state
        swap_class(module, mixin)
    hook_queries_keys(text, method, state)


def unpatch(model) -> None:
    """Remove the hooks, restore the original classes, drop the state."""
    state = getattr(model, "_sparsevlm", None)
    if state is None:
        return
    for h in state["hooks"]:
        h.remove()
    if "rope_module" in state:
        _unwrap_rope(state.pop("rope_module"))
    for m in (model, model.model, model.model.language_model):
        if hasattr(type(m), "_sparsevlm_original"):
            m.__class__ = type(m)._sparsevlm_original
        m.__dict__.pop("_sparsevlm", None)
