"""The staged decoder: any decoder-only text model with `layers`, `norm` and `rotary_emb`, run in
stages split at the pruning layers (transformers 5.x). Family modules (`llava.py`, ...) add only
where the visual tokens are and how positions work; methods add only what to keep.

- The text model's `forward` runs the same decoder-layer loop, split into *stages* at the pruning
  layers. After a pruning layer the method decides, and hidden states, positions, the padding mask
  and the method's per-token state are gathered into a shorter, left-padded sequence. Each stage
  builds its own causal mask and rotary embeddings against its own (shorter) KV cache.
- Queries and keys of a pruning layer are the attention's own: its module's `apply_rotary_pos_emb`
  is wrapped while a model using it is sparsified, and keeps its outputs while a pruning layer runs
  (`patching.ROPE_CAPTURE`; nothing is recomputed). Scoring forms only the raters' rows, O(R·L),
  whatever the attention implementation (`eager`, `sdpa`; `flash_attention_2` takes the same path:
  it never needs the L×L matrix either, only the 2D padding mask that each stage passes on).
- Decoding reuses the shorter caches: stage s > 0 keeps its prefill's padding mask (in
  `state.STAGES`, keyed weakly by the cache: nothing outlives the cache); what was appended since is read from the cache's length
  and the attention mask at every step, so a cache cropped between steps (assisted decoding drops
  rejected draft tokens) stays consistent. A new token's position there is the count of the stage's
  tokens before it (compact positions, as the reference) or the model's own (original positions).
- Assisted generation's first forward holds the prompt and the assistant's first draft: it runs as
  the prompt's prefill, then the draft's first decoding step (the draft rates nothing).
- Outputs are aligned with the input positions; pruned and padding positions get zeros. A plan that
  keeps every token leaves the sequence as it is: keep-all is the dense model at every position.
- A family may add per-token inputs after some layers (`Family.token_inputs`, `Family.after_layer`:
  Qwen3-VL's DeepStack features). They follow their tokens through every re-layout, so a pruned
  token's features leave with it and keep-all adds them exactly where the dense model does.
- Under `torch.compile` (generate's compiled decoding, which needs a static cache) the text model
  runs dense: a static cache already made the eager prefill dense, with the reason in the report.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..methods.base import PruneInput
from ..report import dense_report, from_device
from ..select import ON_HOST, arange, compact_positions, gather, host_counts, plan_layout, visual_of, visual_spans
from .compat import CACHE, ROPE_CAPTURE, attention_kind, preallocated, run_layer
from .state import STAGES, Clock

#: layer types whose layers take the 2D padding mask, not an attention mask: a recurrent state (Qwen3.5's
#: linear attention) zeroes padding tokens' inputs and has no attention matrix to mask
RECURRENT = ("linear_attention", "conv")


class ByLayerType:
    """One stage's masks, or rotary embeddings, where the layers are of several types
    (`config.layer_types`): a type's is built when the stage's first layer of that type asks, with that
    layer's index (a hybrid cache counts tokens at its attention layers only)."""

    def __init__(self, types, build):
        self.types, self.build, self.built = types, build, {}

    def at(self, layer: int):
        kind = self.types[layer]
        if kind not in self.built:
            self.built[kind] = self.build(kind, layer)
        return self.built[kind]


def _at_layer(mask, layer: int):
    """What layer `layer` takes of a stage's mask or rotary embeddings: the one, or its type's (`ByLayerType`)."""
    return mask.at(layer) if isinstance(mask, ByLayerType) else mask


def _counted_at(config, start: int, end: int) -> int | None:
    """The first layer in [start, end) whose cache counts tokens (not a recurrent state), or None."""
    types = getattr(config, "layer_types", None)
    return next((i for i in range(start, end) if not types or types[i] not in RECURRENT), None)


def _batch_first(position_ids, B: int, L: int, device) -> torch.Tensor:
    """Positions as the stages keep them, batch first so that they follow their tokens: (B, L) for
    1D RoPE, (B, L, 3) for M-RoPE (the model's (3, B, L); a leading text row of (4, B, L) is dropped)."""
    if position_ids is None:
        return torch.arange(L, device=device)[None].expand(B, L)
    if position_ids.dim() == 3:
        return position_ids[-3:].permute(1, 2, 0).expand(B, L, 3)
    return position_ids.expand(B, L)


def _packed(position_ids) -> bool:
    """Whether the positions pack several prompts in a row, as transformers reads them without a
    padding mask: 1D positions, or M-RoPE's leading text row of (4, B, L), restart somewhere
    (one host read, only when there is no padding mask)."""
    if position_ids is None or position_ids.dim() == 3 and position_ids.shape[0] != 4:
        return False
    text = position_ids[0] if position_ids.dim() == 3 else position_ids
    return bool((text[:, 1:] != text[:, :-1] + 1).any())


def _model_ids(positions: torch.Tensor) -> torch.Tensor:
    """Positions as the rotary embedding takes them: (B, L) or (3, B, L)."""
    return positions.permute(2, 0, 1) if positions.dim() == 3 else positions


def _layer_ids(positions: torch.Tensor) -> torch.Tensor | None:
    """Positions as the decoder layers and masks take them: 1D ones; none for M-RoPE (as Qwen2-VL)."""
    return positions if positions.dim() == 2 else None


class SparseTextModel:
    """Mixin for the text model: the decoder loop in stages, pruning between them."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        if "past_key_values" in kwargs:  # the name before transformers 5.24 (and its deprecated alias after)
            if cache is not None:
                raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
            cache = kwargs.pop("past_key_values")
        if torch.compiler.is_compiling():  # compiled decoding (a static cache): its eager prefill ran dense and said why
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE: cache}, **kwargs)
        st = self._sparsevlm
        call = st.call()
        given, attention_mask = attention_mask, st.family.padding_mask(self, attention_mask)  # (the dense path: given)
        vis_mask, vision, frames = call.vis_mask, call.vision, call.frames  # (read once: the next call sets its own)
        call.vis_mask, call.vision, call.frames, call.present = None, {}, None, None
        stages = STAGES.get(cache) if cache is not None else None  # the cache was shortened by a pruned prefill
        if stages is not None:
            if vis_mask is not None:
                raise ValueError("this KV cache was shortened by pruning; a continuation with image tokens cannot be "
                                 "appended to it (pass the whole prompt in one forward, or unsparsify the model)")
            return self._sparse_decode(inputs_embeds, attention_mask, position_ids, cache, stages, use_cache, kwargs)
        is_prefill = cache is None or cache.get_seq_length() == 0
        reason = None
        if vis_mask is None:
            reason = "no image tokens in the input"
        elif call.dense_reason:
            reason = call.dense_reason
        elif not is_prefill:
            reason = "the KV cache already holds tokens; pruning happens at prefill only"
        elif preallocated(cache):
            reason = (f"the KV cache is pre-allocated ({type(cache).__name__}); pruning needs layers that hold "
                      f"different numbers of tokens (DynamicCache, generate's default)")
        elif input_ids is not None or inputs_embeds is None:
            reason = "the language model was called with input_ids instead of embeddings"
        elif attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
            reason = "a 4D attention mask (or one per attention type) was given; pruning needs the 2D padding mask"
        elif attention_mask is None and _packed(position_ids):
            reason = ("several prompts are packed in one row (position_ids' text row restarts); a method rates and "
                      "keeps tokens per row, so it would mix them")
        elif any(self._requested(k, kwargs) for k in ("output_attentions", "output_hidden_states")):
            reason = "output_attentions/output_hidden_states were requested; they describe the dense model"
        elif st.method.needs_vision and not vision:
            reason = "the vision tower's signals for these image tokens were not captured"
        if reason is not None and vis_mask is not None and not vis_mask.any():
            reason = "no image tokens in the input"  # (said first; a pruned prefill learns it with its plan)
        if reason is not None:
            return self._dense(reason, is_prefill, vis_mask, input_ids, given, position_ids, cache,
                               inputs_embeds, use_cache, kwargs)
        n = call.prompt_len
        if n is not None and n < inputs_embeds.shape[1] and cache is not None:  # assisted: the prompt, then a draft
            return self._prompt_then_draft(n, inputs_embeds, vis_mask, vision, attention_mask, position_ids, cache,
                                           use_cache, kwargs, frames)
        return self._sparse_prefill(inputs_embeds, vis_mask, vision, attention_mask, position_ids, cache,
                                    use_cache, kwargs, frames)

    def _requested(self, flag: str, kwargs) -> bool:
        """An output flag as transformers resolves it: the forward argument, else the config's."""
        value = kwargs.get(flag)
        return bool(getattr(self.config, flag, False) if value is None else value)

    def _prompt_then_draft(self, n, hidden, vis_mask, vision, attention_mask, position_ids, cache, use_cache,
                           kwargs, frames):
        """Assisted generation verifies the assistant's first draft in the same forward as the prompt
        (its first `n` tokens). The prompt alone is the prefill, pruned as without an assistant (the
        draft rates nothing), and the draft is the first decoding step on the shortened cache."""
        B, L = hidden.shape[:2]

        def prompt(t):  # per-token tensors (B, L, ...) cut to the prompt; positions (.., B, L) too
            if t is None or not isinstance(t, torch.Tensor):
                return t
            return t[:, :n] if t.shape[:2] == (B, L) else t[..., :n]

        first = self._sparse_prefill(prompt(hidden), prompt(vis_mask), {k: prompt(v) for k, v in vision.items()},
                                     prompt(attention_mask), prompt(position_ids), cache, use_cache, kwargs,
                                     prompt(frames))
        cache = getattr(first, CACHE)
        kwargs = self._sparsevlm.family.token_inputs(self, kwargs, hidden)[0]  # (the draft has no visual tokens)
        draft = self.forward(inputs_embeds=hidden[:, n:], attention_mask=attention_mask, use_cache=use_cache,
                             position_ids=None if position_ids is None else position_ids[..., n:], **{CACHE: cache},
                             **kwargs)  # not a prefill: it decodes on the stages the prompt left
        out = torch.cat([first.last_hidden_state, draft.last_hidden_state], 1)
        return BaseModelOutputWithPast(last_hidden_state=out, **{CACHE: cache})

    def _dense(self, reason, is_prefill, vis_mask, input_ids, attention_mask, position_ids, cache, inputs_embeds,
               use_cache, kwargs):
        """The dense forward, with a report saying why (at prefill)."""
        st = self._sparsevlm
        if is_prefill:
            B, L = (inputs_embeds if inputs_embeds is not None else input_ids).shape[:2]
            n_vis = vis_mask.sum(-1) if vis_mask is not None else torch.zeros(B, dtype=torch.long)
            mask2d = st.family.padding_mask(self, attention_mask)  # (Gemma 3's text model gets a mask per layer type)
            n_tok = mask2d.sum(-1) if isinstance(mask2d, torch.Tensor) and mask2d.dim() == 2 \
                else torch.full((B,), L)  # (generate builds a mask per attention type for a static cache)
            st.call().report = dense_report(st.method_name, self.config.num_hidden_layers, n_tok.cpu(),
                                                  n_vis.cpu(), reason)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE: cache}, **kwargs)

    def _stage(self, hidden, mask2d, positions, cache, layer_idx, skip: bool = True, rope: bool = True,
               packed: bool = True, keys=None, extras=None):
        """Causal mask and rotary embeddings for the layers from `layer_idx` on. `skip=False` always
        builds the mask: deciding that sdpa may skip it reads the padding mask on the host (the stages
        after a pruning layer and decoding never read; the first stage decides as the dense model does).
        A stage of one sample after pruning has no padding: `mask2d` None, and sdpa skips the mask
        without reading anything (its `is_causal`; on a GPU, the flash kernel). `packed=False` keeps
        the positions from the mask (the stages after pruning): without a cache and a padding mask,
        transformers would read gaps in them (original positions) as packed sequences.
        One new token under sdpa attends to every valid cached token: its mask is the padding mask as it
        is (what `create_causal_mask` would build, without building it).
        Layers of several types (`config.layer_types`, e.g. Qwen3.5's linear and full attention) get a
        `ByLayerType`: each type's mask, built when the stage's first layer of that type asks.
        A family may build them itself (`Family.layer_masks`: Gemma 3's windows and image blocks), from
        the keys' positions `keys` (B, K) (None: consecutive) and per-token `extras`."""
        pe = self._rotary(hidden, positions, layer_idx) if rope else None
        own = self._sparsevlm.family.layer_masks(self, hidden, mask2d, keys, cache, skip, extras or {})
        if own is not None:
            return ByLayerType(self.config.layer_types, own), pe
        types = getattr(self.config, "layer_types", None)
        if types and set(types) != {"full_attention"}:
            return ByLayerType(types, functools.partial(self._mask, hidden, mask2d, positions, cache, skip, packed)), pe
        return self._mask(hidden, mask2d, positions, cache, skip, packed, "full_attention", layer_idx), pe

    def _mask(self, hidden, mask2d, positions, cache, skip, packed, kind, layer_idx):
        """The mask of one layer type for a stage (`_stage`), built for layer `layer_idx` of that type."""
        if kind in RECURRENT:  # the padding mask of these tokens; None: one new token, or no padding
            if skip:  # (the first stage: as the dense model decides, reading the host)
                return create_recurrent_attention_mask(self.config, hidden, mask2d)
            return None if mask2d is None or hidden.shape[1] == 1 else mask2d[:, -hidden.shape[1]:]
        if (not skip and hidden.shape[1] == 1 and mask2d is not None and mask2d.dim() == 2
                and attention_kind(self.config) == "sdpa"):
            return mask2d.bool().view(mask2d.shape[0], 1, 1, mask2d.shape[1])
        return create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask2d,
                                  position_ids=_layer_ids(positions) if packed else None, layer_idx=layer_idx,
                                  allow_is_causal_skip=skip,
                                  **{CACHE: cache})

    def _rotary(self, hidden, positions, layer_idx):
        """Position embeddings from `layer_idx` on, as the family computes them."""
        return self._sparsevlm.family.rotary(self, hidden, _model_ids(positions), layer_idx)

    def _sparse_prefill(self, hidden, vis_mask, vision, attention_mask, position_ids, cache, use_cache, kwargs,
                        frames=None):
        st = self._sparsevlm
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        layer_kwargs, extras = st.family.token_inputs(self, kwargs, hidden)  # (kwargs stays whole for `_dense`)
        clock = Clock(st, hidden.device)
        seq, report, counted = self._plan(hidden, vis_mask, vision, attention_mask, position_ids, frames, extras, clock)
        why = "no image tokens in the input" if seq["plan"].visual[0] == 0 else st.method.dense_reason(counted)
        if why:
            return self._dense(why, True, seq["vis_mask"], None, attention_mask, position_ids, cache, hidden,
                               use_cache, kwargs)
        stages = self._layers(seq, report, attention_mask, cache, use_cache, layer_kwargs, clock)
        out = self._outputs(seq, report, stages, hidden)
        if use_cache and stages:  # decoding reads each stage's padding mask and token count from them
            STAGES[cache] = stages
        return BaseModelOutputWithPast(last_hidden_state=out, **{CACHE: cache if use_cache else None})

    def _plan(self, hidden, vis_mask, vision, attention_mask, position_ids, frames, extras, clock):
        """The sequence as it will shrink, the report's raw parts, and the per-sample counts read to the
        host (the one wait for the device in a planned prefill: every width the method needs)."""
        method = self._sparsevlm.method
        B, L, _ = hidden.shape
        dev = hidden.device
        valid = attention_mask.bool() if attention_mask is not None else torch.ones(B, L, dtype=torch.bool, device=dev)
        positions = _batch_first(position_ids, B, L, dev)
        vis_mask = vis_mask.to(dev) & valid
        with clock:
            token_state = method.begin(hidden, vis_mask, valid)
        report = {"valid": valid, "vis_mask": vis_mask, "raters": token_state.get("rater"), "steps": [],
                  "layouts": []}
        # What each token is (its input position, −1 for a merged one), where it sits, and the method's
        # per-token state, all kept aligned.
        seq = {"hidden": hidden, "valid": valid, "vis_mask": vis_mask, "positions": positions, "state": token_state,
               "index": arange(L, dev).expand(B, L),  # input position; −1: inserted
               "n_prompt": None,  # (B,) visual tokens of each prompt (`Method.counts`' "visual")
               "span": (visual_spans(vis_mask, frames.to(dev) if frames is not None else
                                     positions[..., 0] if positions.dim() == 3 else None)
                        if method.needs_spans else None),  # per-image / per-frame budgets only
               "vision": vision,
               "extras": {n: t[:, :L] for n, t in extras.items()}}  # (an assisted prefill: the prompt's)
        with clock:
            counted = method.counts(vis_mask, valid, token_state)
            seq["n_prompt"] = counted["visual"]
            if seq["span"] is not None:
                counted["spans"] = seq["span"].amax(-1).clamp(min=0) + 1
            counted = host_counts(counted)
            with torch.profiler.record_function(ON_HOST):  # the plan: arithmetic on host integers
                seq["plan"] = method.plan(counted, token_state)
                if seq["span"] is not None:
                    seq["plan"] = replace(seq["plan"], spans=max(counted["spans"]))
        return seq, report, counted

    def _layers(self, seq, report, attention_mask, cache, use_cache, layer_kwargs, clock) -> list:
        """The decoder layers over the shrinking sequence, the method asked after each pruning layer.
        Returns the stages (each shorter layout and the layer it starts at). The report learns which
        layout each layer saw (0: the input's, s: after pruning step s)."""
        st, method = self._sparsevlm, self._sparsevlm.method
        call = st.call()
        stages, counts_in, counts_out, step = [], [], [], 0
        if method.prunes_input:  # step 0: before the first layer, on the embeddings
            pe = _at_layer(self._rotary(seq["hidden"], seq["positions"], 0), 0)  # (layer 0's, where they differ)
            with clock:
                self._prune(seq, method, report, stages, step, -1, None, None, None, pe)
            step += 1
        mask, pe = self._stage(seq["hidden"], seq["valid"] if stages else attention_mask, seq["positions"], cache, 0,
                               keys=_layer_ids(seq["positions"]), extras=seq["extras"])
        for i, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            counts_in.append(step)
            prune_here = i in method.pruning_layers
            if prune_here:  # the layer's queries and keys are kept as it computes them (compat.wrap_rope)
                call.capture = ROPE_CAPTURE.slot = {}
            try:
                seq["hidden"] = run_layer(layer, seq["hidden"], _at_layer(mask, i), _layer_ids(seq["positions"]),
                                          _at_layer(pe, i), cache, use_cache, layer_kwargs)
            finally:
                ROPE_CAPTURE.slot = None
            # (before pruning: the next layer's input is what the method keeps or merges)
            seq["hidden"] = st.family.after_layer(self, i, seq["hidden"], seq["extras"])
            if prune_here:
                with clock:
                    captured, call.capture = call.capture, None
                    moved = self._prune(seq, method, report, stages, step, i, captured["q"], captured["k"],
                                        layer.self_attn.scaling, _at_layer(pe, i), captured.get("raw_k"))
                step += 1
                one = seq["hidden"].shape[0] == 1  # one sample: no padding, the mask is causal alone (sdpa: none)
                if moved:
                    mask, pe = self._stage(seq["hidden"], None if one else seq["valid"], seq["positions"], cache,
                                           i + 1, skip=one, packed=False, keys=_layer_ids(seq["positions"]),
                                           extras=seq["extras"])
            counts_out.append(step)
        report["counts_in"], report["counts_out"] = counts_in, counts_out
        return stages

    def _outputs(self, seq, report, stages, hidden):
        """The last hidden states at the input positions, and the report, built when asked for
        (`sparsevlm.report`) so that the prefill never waits to copy it."""
        st = self._sparsevlm
        call = st.call()
        B, L, D = hidden.shape
        valid = report["valid"]
        if stages:  # a pruned or padding position gets zeros
            present = seq["valid"] & (seq["index"] >= 0)
            slot = seq["index"].where(present, L)  # pruned and inserted tokens go to a spare slot, dropped
            out = hidden.new_zeros(B, L + 1, D).scatter(1, slot[..., None].expand(-1, -1, D), self.norm(seq["hidden"]))
            call.present = torch.zeros(B, L + 1, dtype=torch.bool, device=hidden.device).scatter(1, slot, present)[:, :L]
        else:  # nothing moved: every position, padding included, as the dense model computes it
            out, call.present = self.norm(seq["hidden"]), torch.ones(B, L, dtype=torch.bool, device=hidden.device)
        report["present"], report["right_padding"] = call.present, (valid[:, :-1] & ~valid[:, 1:]).any()
        overhead, call.overhead_s = call.overhead_s, 0.0
        call.report = functools.partial(from_device, st.method_name, self.config.num_hidden_layers, report,
                                        overhead if st.timing else None)
        return out[:, :L]

    def _prune(self, seq, method, report, stages, step, layer, queries, keys, scaling, pe, raw_keys=None):
        """Ask the method at one pruning point (after `layer`; −1: before the first layer) and
        re-lay the sequence out: kept tokens in place, inserted ones after the visual span. Returns
        False when the plan said the step keeps every token (the sequence, masks and positions stay)."""
        B, L = seq["hidden"].shape[:2]
        dev = seq["hidden"].device
        dec = method.prune(PruneInput(step=step, layer=layer, hidden=seq["hidden"], valid=seq["valid"],
                                      vis_mask=seq["vis_mask"], queries=queries, keys=keys, scaling=scaling,
                                      position_embeddings=pe, token_state=seq["state"], vision=seq["vision"],
                                      n_prompt=seq["n_prompt"], spans=seq["span"], plan=seq["plan"],
                                      norm=self.norm, raw_keys=raw_keys))
        seq["plan"] = seq["plan"].merged(dec.plan)
        vis_mask = seq["vis_mask"]
        step_report = {"layer": layer, "info": dec.info, "scores": dec.scores, "score_index": dec.score_index}
        if seq["plan"].same.get(step):  # keep-all: padding positions too stay as the dense model has them
            kept_all = (dec.keep == seq["valid"]).all() & (dec.inserted_valid is None or ~dec.inserted_valid.any())
            torch._assert_async(kept_all, f"step {step} was planned to keep every token but dropped or inserted some")
            report["layouts"].append((seq["index"], seq["valid"]))
            report["steps"].append({**step_report, "recycled": None})
            return False
        ins = dec.inserted_valid  # (B, K) or None; inserted tokens are visual
        K = 0 if ins is None else ins.shape[1]
        # Inserted tokens go right after the last visual position (of a sample that has one).
        anchor = (arange(L, dev) * vis_mask).amax(-1) if K else None
        layout = plan_layout(dec.keep, anchor, ins, seq["plan"].width.get(step))
        self._relayout(seq, method, layout, dec, last=step + 1 == method.steps, report=report)
        report["layouts"].append((seq["index"], layout.valid))
        report["steps"].append({**step_report, "recycled": ins})
        stages.append({"start": layer + 1, "valid": layout.valid, "positions": _layer_ids(seq["positions"])})
        return True

    @staticmethod
    def _relayout(seq, method, layout, dec, last: bool, report) -> None:
        """Move the sequence and everything aligned with it into `layout`. Per-token tensors follow
        their tokens, the integer ones in one gather; inserted tokens come from no input position
        (index −1) and have zero state. After the method's `last` step, what only it reads is dropped."""
        ins = dec.inserted_valid
        K = 0 if ins is None else ins.shape[1]
        seq["hidden"] = layout.apply(seq["hidden"], dec.inserted)
        ints = {(None, "index"): (seq["index"], -1)}  # (part of seq or None, name): (tensor, what inserted get)
        if method.positions != "compact" and seq["positions"].dim() == 2:
            ints[None, "positions"] = (seq["positions"], gather(seq["positions"], dec.inserted_from) if K else 0)
        if last:
            seq.update(vis_mask=None, span=None, state={}, vision={})
        if seq["span"] is not None:
            ints[None, "span"] = (seq["span"], gather(seq["span"], dec.inserted_from) if K else 0)
        # How each entry moves: the method declares its state's; the vision tower's signals and a family's
        # extras are per token. "index": positions (B, N) of tokens that stay, renumbered.
        for part, moves in (("state", method.token_moves), ("vision", None), ("extras", None)):
            for n, t in seq[part].items():
                how = "token" if moves is None else moves.get(n)
                if how == "index":
                    seq[part] = {**seq[part], n: layout.moved(t)}
                elif how == "token" and t.dim() == 2 and not t.is_floating_point():
                    ints[part, n] = (t, 0)
                elif how == "token":  # (floats and wider tensors on their own)
                    zeros = t.new_zeros(*ins.shape, *t.shape[2:]) if K else None
                    seq[part] = {**seq[part], n: layout.apply(t, zeros)}
        for (part, name), out in zip(ints, layout.apply_ints(list(ints.values()), K)):
            if part is None:
                seq[name] = out
            else:
                seq[part] = {**seq[part], name: out}
        if not last:  # visual: inserted, or visual in the input
            seq["vis_mask"] = visual_of(seq["index"], layout.valid, report["vis_mask"])
        if method.positions == "compact":
            seq["positions"] = compact_positions(layout.valid)
        elif seq["positions"].dim() == 3:  # M-RoPE's (B, L, 3): inserted tokens take their source's
            seq["positions"] = layout.apply(seq["positions"], gather(seq["positions"], dec.inserted_from) if K else None)
        seq["valid"] = layout.valid

    def _sparse_decode(self, hidden, attention_mask, position_ids, cache, stages, use_cache, kwargs):
        st = self._sparsevlm
        B, q = hidden.shape[:2]
        dev = hidden.device
        kwargs = st.family.token_inputs(self, kwargs, hidden)[0]  # (decoding has no visual tokens: none to add)
        if position_ids is None:
            position_ids = torch.arange(q, device=dev)[None] + cache.get_seq_length(0)
        positions0 = _batch_first(position_ids, B, q, dev)
        starts = {s["start"]: s for s in stages}
        mask, pe = self._stage(hidden, attention_mask, positions0, cache, 0, skip=False)  # no host reads in decoding
        for i, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if i in starts:  # a shorter stage: its own mask, and its own positions when compact
                s = starts[i]
                # Its cache holds the prefill's kept tokens, then every token decoded since (as the dense layers'
                # caches do). What was dropped since (assisted decoding crops rejected draft tokens, even ones
                # that the prefill verified) is gone from the cache and the attention mask alike: read both afresh.
                # (read at its first layer that counts tokens; recurrent layers alone take the new tokens' mask)
                counted = _counted_at(self.config, i, min([b for b in starts if b > i], default=len(self.layers)))
                cached = s["valid"].shape[1] if counted is None else cache.get_seq_length(counted)
                kept = min(cached, s["valid"].shape[1])  # of the prefill's tokens
                new = cached + q - kept
                valid = torch.cat([s["valid"][:, :kept], attention_mask[:, -new:].bool() if attention_mask is not None
                                   else torch.ones(B, new, dtype=torch.bool, device=dev)], dim=1)
                if st.method.positions == "compact":  # numbered on from the stage's own tokens
                    pos = valid.long().cumsum(-1)[:, -q:] - 1
                    mask, pe = self._stage(hidden, valid, pos, cache, i, skip=False)
                else:  # the same positions: only the mask is new (a family's windows read its keys' positions)
                    keys = None if s["positions"] is None else torch.cat(
                        [s["positions"][:, :kept], positions0[:, -1:] - new + 1 + arange(new, dev)], 1)
                    mask = self._stage(hidden, valid, positions0, cache, i, skip=False, rope=False, keys=keys)[0]
            hidden = run_layer(layer, hidden, _at_layer(mask, i), _layer_ids(positions0), _at_layer(pe, i), cache,
                               use_cache, kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), **{CACHE: cache})
