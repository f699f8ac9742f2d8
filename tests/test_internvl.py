"""InternVL 3/3.5 (`InternVLForConditionalGeneration`): tiny random models built in-process, with
Qwen3, Qwen2 or Llama text models. Images are tiles of 16 tokens (256 on the real model); prompts in
one batch hold different numbers of tiles and images. The guarantees of every family: keep-all
equals dense, batched equals each sample alone, beams, the report equals `planned_counts`,
per-tile budgets, unsparsify exact, refusals that leave the model as it was."""
import pytest
import torch
from helpers import (assert_batched_equals_alone, assert_beams_return_several, assert_refused_and_unchanged,
                     assert_report_is_planned_counts, assert_scores_are_the_models_attention)
from transformers import InternVLConfig

import sparsevlm
from sparsevlm import SparseVLMConfig
from sparsevlm.models.internvl import tile_tokens, tiles
from sparsevlm.toy.families import END, IMAGE, INTERNVL_TEXT, START, tiny_internvl

torch.set_grad_enabled(False)

PER_TILE = 16
KEEP_ALL = SparseVLMConfig(mode="schedule", pruning_layers=(1, 2), schedule=(1000, 1000), recycle=False)
METHODS = [SparseVLMConfig(pruning_layers=(1, 2), scale=2.0),
           SparseVLMConfig.preset(64, pruning_layers=(1, 2, 3), schedule=(30, 20, 10)),
           SparseVLMConfig(pruning_layers=(1, 2), scale=2.0, positions="original"),
           sparsevlm.FastVConfig(layer=1, prune_ratio=0.6), sparsevlm.PDropConfig(pruning_layers=(1, 2), keep_ratio=0.5),
           sparsevlm.RandomConfig(pruning_layers=(1, 2), schedule=(25, 12)),
           sparsevlm.DivPruneConfig(keep=12), sparsevlm.CDPrunerConfig(keep=12)]
IDS = ["rank", "preset", "rank-original", "fastv", "pdrop", "random", "divprune", "cdpruner"]
GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


def batch(images, text_lens, seed=0):
    """A left-padded batch: sample b holds the images `images[b]`, each given as its number of tiles
    (the thumbnail counted), each image `<img>`, 16 tokens a tile, `</img>`; then text. Returns the
    batch, each sample alone, and each sample's visual tokens."""
    g = torch.Generator().manual_seed(seed)
    rows, pixels = [], []
    for n_tiles, t in zip(images, text_lens):
        row = [1, 7]
        for n in n_tiles:
            row += [START] + [IMAGE] * PER_TILE * n + [END]
        rows.append(row + torch.randint(10, 128, (t,), generator=g).tolist())
        pixels.append(torch.randn(sum(n_tiles), 3, 32, 32, generator=g))
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    full = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels)}
    alone = [{"input_ids": torch.tensor([r]), "attention_mask": torch.ones(1, len(r), dtype=torch.long),
              "pixel_values": p} for r, p in zip(rows, pixels)]
    return full, alone, [PER_TILE * sum(n) for n in images]


@pytest.fixture(scope="module")
def model():
    return tiny_internvl("qwen3")  # InternVL3.5's text model


def test_a_tile_is_256_tokens_on_the_real_model_and_16_on_the_tiny_one(model):
    assert tile_tokens(InternVLConfig()) == 256  # 448-pixel tiles, 14-pixel patches, pixel shuffle 0.5
    assert tile_tokens(model.config) == PER_TILE
    assert model.model.get_image_features(torch.randn(3, 3, 32, 32), return_dict=True).pooler_output.shape[:2] == (3, 16)
    vis = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    assert tiles(vis, 2).tolist() == [[-1, 0, 0, 1, 1, 2, -1, 0, 0, -1]]  # tiles restart with each image


@pytest.mark.parametrize("text", INTERNVL_TEXT)
def test_keep_all_equals_dense_and_unsparsify_restores_it(model, text):
    model = model if text == "qwen3" else tiny_internvl(text)
    inputs, _, counts = batch([[3], [5, 1]], [5, 8])
    dense, dense_ids = model(**inputs).logits, model.generate(**inputs, **GREEDY)
    valid = inputs["attention_mask"].bool()
    with sparsevlm.sparsified(model, KEEP_ALL):
        torch.testing.assert_close(model(**inputs).logits[valid], dense[valid], atol=1e-4, rtol=1e-4)
        rep = sparsevlm.report(model)
        assert not rep.dense and rep.n_visual.tolist() == counts == [48, 96]
        assert torch.equal(model.generate(**inputs, **GREEDY), dense_ids)
    assert torch.equal(model(**inputs).logits, dense)
    if text != "qwen3":  # each text model's own attention is captured and prunes
        with sparsevlm.sparsified(model, METHODS[0]):
            assert_batched_equals_alone(model, *batch([[2], [4]], [6, 3], seed=1)[:2], new_tokens=2)


@pytest.mark.parametrize("cfg", METHODS, ids=IDS)
def test_batched_equals_each_sample_alone(model, cfg):
    inputs, alone, counts = batch([[3], [5, 1]], [6, 3], seed=1)
    with sparsevlm.sparsified(model, cfg):
        rep = assert_batched_equals_alone(model, inputs, alone)
    assert not rep.dense and rep.n_visual.tolist() == counts
    assert (rep.visual_out[:, -1] < torch.tensor(counts)).all()  # pruned


@pytest.mark.parametrize("cfg", [METHODS[1].replace(schedule_of=None), *METHODS[3:]], ids=IDS[1:2] + IDS[3:])
def test_the_report_is_planned_counts(model, cfg):
    inputs, _, counts = batch([[2], [3, 2]], [4, 7], seed=2)
    assert_report_is_planned_counts(model, inputs, counts, cfg)


def test_beams_sampling_and_several_returned_sequences(model):
    inputs, alone, _ = batch([[3], [2, 2]], [5, 3], seed=2)
    assert_beams_return_several(model, inputs, alone[0], METHODS[1])
    with sparsevlm.sparsified(model, METHODS[1]):
        assert model.generate(**inputs, do_sample=True, max_new_tokens=3, num_return_sequences=2).shape[0] == 4


@pytest.mark.parametrize("method", ["sparsevlm", "random"])
def test_budget_per_span_gives_each_tile_its_share(model, method):
    """A span is one tile (the thumbnail is one too): 12 tokens over 3 tiles keep 4 each; over 6
    tiles in two images (4 and 2 tiles) 2 each, wherever the scores are."""
    inputs, _, counts = batch([[3], [4, 2]], [4, 9], seed=3)
    cfg = (SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=(12,), recycle=False, budget_per="span")
           if method == "sparsevlm" else sparsevlm.RandomConfig(pruning_layers=(1,), schedule=(12,), budget_per="span"))
    with sparsevlm.sparsified(model, cfg):
        model(**inputs)
        kept = sparsevlm.report(model).steps[0]["kept"]
    assert counts == [48, 96]
    assert torch.bincount(torch.tensor(kept[0]) // PER_TILE).tolist() == [4, 4, 4]
    assert torch.bincount(torch.tensor(kept[1]) // PER_TILE).tolist() == [2] * 6


def test_what_cannot_work_is_refused_and_the_model_stays_as_it_was(model):
    name = type(model).__name__
    refused = [(sparsevlm.VisionZipConfig(), f"reads the vision tower's .*{name} pixel-shuffles"),
               (sparsevlm.ToMeConfig(), f"reads the vision tower's .*{name} pixel-shuffles"),
               (sparsevlm.VisPrunerConfig(), f"reads the vision tower's .*{name} pixel-shuffles"),
               (sparsevlm.PoolingConfig(), f"Pooling pools one square grid .*{name} builds each image"),
               (sparsevlm.DyCokeConfig(), f"DyCoke reduces video frames; {name} gives a video's frames"),
               (SparseVLMConfig(pruning_layers=(1, 4)), "layers \\[4\\] do not exist")]
    assert_refused_and_unchanged(model, batch([[2]], [3])[0], METHODS[0], refused)


def test_a_sliding_window_text_model_is_refused():
    model = tiny_internvl("qwen2")
    model.config.text_config.layer_types = ["sliding_attention"] * 4
    model.config.text_config.sliding_window = 8
    with pytest.raises(TypeError, match="Qwen2Model uses sliding-window attention"):
        sparsevlm.sparsify(model)
    assert not hasattr(model, "_sparsevlm")


def test_the_command_line_knows_the_model_type():
    assert "internvl" in sparsevlm.models.model_types()


def test_scores_are_the_models_own_attention():
    """Qwen3's q/k norms and RoPE applied as its attention applies them: the raters' attention to the
    image tokens is the eager dense model's, and the kept tokens are its top ones."""
    inputs, _, _ = batch([[2]], [6])
    assert_scores_are_the_models_attention(tiny_internvl("qwen3", attn="eager"), inputs, IMAGE, keep=5,
                                           positions="compact")


def test_dense_accounting_and_class_names_are_the_models(model):
    """Dense rows are counted as a sparsified model counts them; loaders find the classes by name."""
    from sparsevlm.report import dense_report_for

    inputs, _, counts = batch([[3], [1, 2]], [3, 5])
    names = [type(m).__name__ for m in model.modules()]
    with sparsevlm.sparsified(model, KEEP_ALL):
        model(**inputs)
        assert sparsevlm.report(model).n_visual.tolist() == counts
        assert [type(m).__name__ for m in model.modules()] == names
    assert dense_report_for(model, inputs).n_visual.tolist() == counts
