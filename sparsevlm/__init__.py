"""sparsevlm: SparseVLM (ICML 2025, arXiv 2410.04417) for Hugging Face vision-language models.

Training-free, text-guided visual-token sparsification: text raters score the visual tokens by
attention, the rank of that attention sets how many to keep, pruned tokens are recycled into a
few merged ones, and the language model prunes progressively.
"""
from .budget import attention_rank, equivalent_tokens, keep_count, layer_counts, rank_keep_count
from .config import PLUS_SCHEDULES, PRESET_SCHEDULES, SparseVLMConfig
from .methods import (CDPrunerConfig, DARTConfig, DivPruneConfig, FastVConfig, PDropConfig, PoolingConfig, RandomConfig,
                      ToMeConfig, VisionZipConfig, VisPrunerConfig, match_budget, matched_baselines, planned_counts,
                      planned_tokens)
from .models import report, sparsified, sparsify, unsparsify
from .raters import select_raters, text_relevance
from .recycle import Recycled, density_peak_clusters, merge_clusters, recycle
from .scores import rater_attention, rope_gravity, top_heads, visual_scores
from .select import Layout, compact_positions, gather, mask_to_index, plan_layout, topk_mask
from .report import Report
from .utils import seed_everything
from . import flops  # sparsevlm.flops.paper_table() etc.

__version__ = "0.1.0"

__all__ = [
    "sparsify", "unsparsify", "sparsified", "report", "Report",
    "SparseVLMConfig", "RandomConfig", "FastVConfig", "PDropConfig", "VisionZipConfig", "ToMeConfig", "DARTConfig",
    "DivPruneConfig", "VisPrunerConfig", "CDPrunerConfig", "PoolingConfig", "PRESET_SCHEDULES", "PLUS_SCHEDULES",
    "match_budget", "matched_baselines", "planned_counts", "planned_tokens",
    "select_raters", "text_relevance",
    "rater_attention", "visual_scores", "rope_gravity", "top_heads",
    "attention_rank", "rank_keep_count", "keep_count", "layer_counts", "equivalent_tokens",
    "recycle", "Recycled", "density_peak_clusters", "merge_clusters",
    "Layout", "plan_layout", "gather", "mask_to_index", "topk_mask", "compact_positions",
    "seed_everything", "flops",
]
