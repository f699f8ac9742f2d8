"""The family adapter contract: what one model family supplies to `sparsify` and the staged loop.

A new family is one file with a `Family` subclass, and one line in `models/__init__.py`'s
`ADAPTERS`. The command line's model types and the attentions a text model may use come from the
adapters, so nothing else lists the families.
"""
from __future__ import annotations

from . import compat


class Family:
    """One model family (e.g. LLaVA's classes, or Qwen2-VL's). Subclasses set the class attributes and
    `classes`, and override what differs; the defaults suit a decoder-only text model with one rotary
    embedding and full attention in every layer."""

    #: one line naming the supported classes, for error messages
    SUPPORTED: str = ""
    #: position modes the family allows; the first is the default of configs built for it
    POSITIONS: tuple[str, ...] = ("compact", "original")
    #: `config.model_type` of each checkpoint this family loads (the command line's `--model PATH`)
    MODEL_TYPES: tuple[str, ...] = ()
    #: the text models' attention modules whose queries and keys are captured: modeling module name ->
    #: the attention's submodule whose output is the keys before RoPE
    ATTENTIONS: dict[str, str] = {}

    def classes(self) -> tuple:
        """The transformers classes of this family (imported when asked)."""
        raise NotImplementedError

    def unsupported_reason(self, model) -> str | None:
        """Why `model` cannot be sparsified by this family (None if it can)."""
        if not isinstance(model, self.classes()):
            return f"{type(model).__name__} is not supported; supported: {self.SUPPORTED}"
        return self.text_unsupported_reason(model.model.language_model)

    def check(self, model, method) -> None:
        """Raise if `method` cannot run on `model` (naming both); touches nothing. Subclasses call this
        first, then add their own checks."""
        meth, why = type(method).__name__, self.tower_why(model) if method.needs_vision else None
        if why:
            raise ValueError(f"{meth} reads the vision tower's [CLS] attention for each image feature; {why}. Use a "
                             f"method that prunes inside the language model (SparseVLM, FastV, PyramidDrop, random), "
                             f"DivPrune or CDPruner")
        why = self.grid_why(model) if method.needs_grid else None
        if why:
            raise ValueError(f"{meth} pools one square grid of visual tokens per image; {why}. Use DivPrune, CDPruner "
                             f"or a method that prunes inside the language model")
        text = model.model.language_model
        check_layers(text, method)
        bad = [i for i in method.pruning_layers if not self.prunable(text, i)]
        if bad:
            raise ValueError(f"pruning_layers {list(method.pruning_layers)}: {type(method).__name__} cannot prune "
                             f"{type(model).__name__} after layers {bad} ({self.unprunable_why(text, bad)}); "
                             f"choose other layers{self.prunable_hint(text, method.pruning_layers)}")
        if method.needs_frames and not self.reads_video(model):
            raise ValueError(f"{type(method).__name__} reduces video frames; {type(model).__name__} reads no video, "
                             f"only images. Use a method for images (SparseVLM, FastV, PyramidDrop, DivPrune, ...)")
        if method.positions not in self.POSITIONS:
            raise ValueError(f"positions={method.positions!r}: {type(model).__name__} {self.positions_why()}")

    def tower_why(self, model) -> str | None:
        """Why methods reading the vision tower's [CLS] attention cannot run on `model`, a clause naming
        it (None: they can)."""
        return None

    def grid_why(self, model) -> str | None:
        """Why methods pooling one square grid per image cannot run on `model`, a clause naming it (None:
        they can)."""
        return None

    def visual_tokens(self, config) -> int | None:
        """Visual tokens of one image, where every image has the same number; None where it depends on
        the image (tiles, crops, native resolution)."""
        return None

    def reads_video(self, model) -> bool:
        """Whether `model` reads video (methods that reduce frames need it)."""
        return True

    def positions_why(self) -> str:
        """Why the family allows only its `POSITIONS`: the error's words after the model's name."""
        return f"allows positions {' or '.join(map(repr, self.POSITIONS))}"

    def patch(self, model, method, state) -> None:
        """Swap in the sparse classes and hooks (after `check`); `state` is the model's `ModelState`."""
        raise NotImplementedError

    # What the staged loop asks per layer. A family with several rotary embeddings or layer kinds
    # (local and global attention) overrides these.

    def rotary(self, text, hidden, position_ids, layer: int):
        """The position embeddings of the layers from `layer` on, for `position_ids` as the text
        model's rotary embedding takes them. A family with one rotary embedding per layer type
        (Gemma 3's local and global bases) returns a `staged.ByLayerType` of them."""
        return text.rotary_emb(hidden, position_ids=position_ids)

    def padding_mask(self, text, attention_mask):
        """The 2D padding mask (B, L) behind the text model's `attention_mask` (None: no padding). A
        family whose multimodal model builds one mask per layer type before the text model (Gemma 3)
        recovers the 2D mask; the dense path still gets the masks as given."""
        return attention_mask

    def layer_masks(self, text, hidden, mask2d, keys, cache, skip: bool, extras: dict):
        """A family's own attention masks for a stage, or None for the staged loop's (causal, one per
        layer type). Returns build(kind, layer): the mask of layer type `kind`, sized against layer
        `layer`, the stage's first of that type (`staged.ByLayerType` asks once per type). `keys`: the
        1D positions (B, K) of every key the 2D mask covers, the queries last; None where they are
        consecutive. `extras`: the per-token tensors of those keys (`token_inputs`; a prefill's only).
        `skip`: whether sdpa may skip a plain causal mask (reading the padding mask on the host)."""
        return None

    def prunable(self, text, layer: int) -> bool:
        """Whether a method may prune after `layer` (its queries and keys are those of attention)."""
        return True

    def unprunable_why(self, text, layers: list) -> str:
        """Why a method may not prune after `layers` (the error's words in brackets)."""
        return "no attention scores there"

    def prunable_hint(self, text, layers) -> str:
        """What to choose instead of `layers` (the error's last words, from ", e.g. ..."), or ""."""
        return ""

    def prunable_layers(self, text, layers) -> tuple[int, ...]:
        """`layers` moved to where a method may prune. `sparsify` never moves them (it refuses); the
        recipes do, visibly in the configs they build (the command line's and the bench's presets)."""
        return tuple(layers)

    # Per-token inputs a family adds between layers (Qwen3-VL's DeepStack features). The staged loop
    # carries them with their tokens: a pruned token's go with it, an inserted token's are zeros.

    def token_inputs(self, text, kwargs: dict, hidden) -> tuple[dict, dict]:
        """Split the text model's keyword arguments into those its layers take and the family's
        per-token tensors, {name: (B, L', ...)} over the forward's whole input (L' ≥ the prefill's
        length). `kwargs` itself is left as it is (a dense fallback passes it on)."""
        return kwargs, {}

    def after_layer(self, text, layer: int, hidden, extras: dict):
        """The hidden states the next layer takes, after `layer` ran, given the per-token tensors of
        the tokens now present. Entries no later layer reads may be removed from `extras`."""
        return hidden

    def text_unsupported_reason(self, text) -> str | None:
        """Why the staged decoder cannot run `text` (None if it can)."""
        if not all(hasattr(text, a) for a in ("layers", "norm", "rotary_emb")):
            return f"text model {type(text).__name__} lacks layers/norm/rotary_emb; supported: {self.SUPPORTED}"
        attn = text.layers[0].self_attn
        if compat.attention_module(attn, self.ATTENTIONS) is None:
            return (f"attention {type(attn).__name__} is not one whose queries and keys this library captures "
                    f"({', '.join(self.ATTENTIONS)}); supported: {self.SUPPORTED}")
        cfg = text.config
        kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"} or getattr(cfg, "sliding_window", None) is not None and not hasattr(cfg, "layer_types"):
            return (f"text model {type(text).__name__} uses sliding-window attention, whose cache crops itself; "
                    f"supported: {self.SUPPORTED} (set text_config.sliding_window=None)")
        return None


def check_layers(text, method) -> None:
    """Raise if the method's pruning layers do not exist in `text`."""
    n = text.config.num_hidden_layers
    bad = [i for i in method.pruning_layers if i >= n]
    if bad:
        raise ValueError(f"pruning_layers {list(method.pruning_layers)}: layers {bad} do not exist; "
                         f"this model has layers 0..{n - 1}")
