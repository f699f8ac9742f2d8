import pytest

from sparsevlm import PRESET_SCHEDULES, FastVConfig, PDropConfig, RandomConfig, SparseVLMConfig, ToMeConfig


def test_defaults_are_the_reference_rank_mode():
    cfg = SparseVLMConfig()
    assert (cfg.mode, cfg.pruning_layers, cfg.scale, cfg.bias) == ("rank", (2, 6, 15, 19), 13.5, 0.0)
    assert (cfg.recycle, cfg.recycle_ratio, cfg.cluster_ratio, cfg.merge, cfg.positions) == (True, 0.3, 0.1, "mean", "compact")


@pytest.mark.parametrize("tokens,schedule", [(192, (300, 200, 110)), (128, (303, 110, 36)),
                                             (96, (238, 48, 26)), (64, (66, 30, 17))])
def test_presets_are_the_reference_schedules(tokens, schedule):
    cfg = SparseVLMConfig.preset(tokens)
    assert cfg.mode == "schedule" and cfg.pruning_layers == (2, 6, 15) and cfg.schedule == schedule
    assert PRESET_SCHEDULES[tokens] == schedule


def test_preset_overrides_and_unknown_preset():
    assert SparseVLMConfig.preset(64, recycle=False).recycle is False
    with pytest.raises(ValueError, match=r"tokens=100 .*allowed: \[192, 128, 96, 64\]"):
        SparseVLMConfig.preset(100)


@pytest.mark.parametrize("kwargs,field", [
    (dict(mode="fast"), "mode"),
    (dict(rank_form="ratio"), "rank_form"),
    (dict(rater_rule="first"), "rater_rule"),
    (dict(merge="max"), "merge"),
    (dict(positions="absolute"), "positions"),
    (dict(pruning_layers=()), "pruning_layers"),
    (dict(pruning_layers=(6, 2)), "pruning_layers"),
    (dict(pruning_layers=(-1,)), "pruning_layers"),
    (dict(scale=0), "scale"),
    (dict(rank_form="delete"), "scale"),  # λ must be in (0, 1]
    (dict(mode="schedule"), "schedule"),
    (dict(mode="schedule", pruning_layers=(2, 6), schedule=(10,)), "schedule"),
    (dict(mode="schedule", pruning_layers=(2,), schedule=(-3,)), "schedule"),
    (dict(schedule=(10, 10, 10, 10)), "schedule"),  # schedule without mode="schedule"
    (dict(recycle_ratio=0), "recycle_ratio"),
    (dict(cluster_ratio=1.5), "cluster_ratio"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        SparseVLMConfig(**kwargs)


def test_config_is_frozen_and_replace_validates():
    cfg = SparseVLMConfig()
    with pytest.raises(Exception):
        cfg.scale = 1.0
    assert cfg.replace(scale=2.0).scale == 2.0 and cfg.scale == 13.5
    assert SparseVLMConfig(pruning_layers=[1, 3]).pruning_layers == (1, 3)
    with pytest.raises(ValueError, match="merge="):
        cfg.replace(merge="max")
    with pytest.raises(ValueError, match="unknown field"):
        cfg.replace(ratio=0.5)


def test_sparsevlm_plus_preset():
    cfg = SparseVLMConfig.plus(128)  # the reference's SparseVLM+ lists (USE_VERSION=2_0, commit 9e1f649)
    assert cfg.schedule == (238, 108, 60) and cfg.rope_correction and cfg.top_heads == 14
    assert [SparseVLMConfig.plus(n).schedule for n in (192, 96, 64)] == [(300, 200, 118), (246, 54, 28), (66, 34, 20)]
    assert SparseVLMConfig.preset(128).schedule == (303, 110, 36)  # v1.5's stay with preset
    assert SparseVLMConfig.plus(128, n_visual=64, num_layers=8).schedule == (26, 12, 7)  # scaled as preset
    assert not cfg.recycle and cfg.positions == "original"
    assert SparseVLMConfig.plus(64, top_heads=2).top_heads == 2
    with pytest.raises(ValueError, match="^top_heads=0"):
        SparseVLMConfig(top_heads=0)


@pytest.mark.parametrize("make, field", [
    (lambda: SparseVLMConfig(bias=float("nan")), "bias"),
    (lambda: SparseVLMConfig(scale="13"), "scale"),
    (lambda: SparseVLMConfig(scale=float("inf")), "scale"),
    (lambda: SparseVLMConfig(pruning_layers=5), "pruning_layers"),
    (lambda: SparseVLMConfig(mode="schedule", pruning_layers=(1,), schedule=7), "schedule"),
    (lambda: SparseVLMConfig(top_heads=True), "top_heads"),
    (lambda: SparseVLMConfig(recycle="yes"), "recycle"),
    (lambda: SparseVLMConfig(recycle_ratio=float("nan")), "recycle_ratio"),
    (lambda: RandomConfig(seed=2 ** 70), "seed"),
    (lambda: RandomConfig(seed="x"), "seed"),
    (lambda: FastVConfig(prune_ratio="0.5"), "prune_ratio"),
    (lambda: PDropConfig(keep_ratio=float("nan")), "keep_ratio"),
])
def test_numeric_fields_are_checked_for_type_finiteness_and_range(make, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        make()


def test_match_budget_refuses_a_target_that_is_not_a_finite_number():
    import numpy as np

    from sparsevlm import match_budget

    for bad in (float("nan"), float("inf"), -1, "64", True):
        with pytest.raises(ValueError, match="tokens="):
            match_budget(SparseVLMConfig.preset(64), bad, 576, 32)
    assert match_budget(SparseVLMConfig.preset(64), np.float32(64.8), 576, 32).schedule  # NumPy numbers are fine


def test_rank_mode_scales_with_the_models_numbers():
    """`SparseVLMConfig.rank` is the paper's rank mode on LLaVA-1.5-7B's numbers, and the toy's own
    (layers 1, 2, 4, 5; scale 1.5) on its 64 tokens and 8 layers: one rule, no model recognised."""
    from sparsevlm import toy

    assert SparseVLMConfig.rank() == SparseVLMConfig()
    assert SparseVLMConfig.rank(toy.TOY_VISUAL, toy.TOY_NUM_LAYERS) == toy.rank_config()
    cfg = SparseVLMConfig.rank(729, 28, positions="original")
    assert cfg.pruning_layers == (2, 6, 14, 17) and cfg.scale == pytest.approx(13.5 * 729 / 576)
    assert cfg.positions == "original" and cfg.mode == "rank"
    with pytest.raises(ValueError, match="n_visual=0"):
        SparseVLMConfig.rank(0, 28)


def test_every_config_declares_the_shared_base():
    """Each method's config subclasses `MethodConfig` and answers its three questions."""
    from sparsevlm.config import BUDGET_PER, POSITIONS, MethodConfig, layers_for
    from sparsevlm.methods import ALL

    for method in ALL:
        cfg = method.config()
        assert isinstance(cfg, MethodConfig), method.config.__name__
        assert cfg.positions in POSITIONS and cfg.budget_per in BUDGET_PER
        assert isinstance(layers_for(cfg, 32), tuple)
    assert ToMeConfig().pruning_layers == () and layers_for(ToMeConfig(), 28) == ()  # before the language model
    assert layers_for(PDropConfig(), 28) == (7, 14, 21)  # its paper's 8/16/24 of 32, scaled
