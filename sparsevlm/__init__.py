"""sparsevlm: SparseVLM (ICML 2025, arXiv 2410.04417) for Hugging Face vision-language models.

Training-free, text-guided visual-token sparsification: text raters score the visual tokens by
attention, the rank of that attention sets how many to keep, pruned tokens are recycled into a
few merged ones, and the language model prunes progressively.
"""
from .budget import attention_rank, equivalent_tokens, rank_keep_count
from .config import PLUS_SCHEDULES, PRESET_SCHEDULES, SparseVLMConfig
from .methods import (CDPrunerConfig, DARTConfig, DivPruneConfig, DyCokeConfig, FastVConfig, FastVIDConfig, HoliTomConfig,
                      PDropConfig, PoolingConfig, RandomConfig, ToMeConfig, VidCom2Config, VisionZipConfig,
                      VisPrunerConfig, match_budget, matched_baselines, planned_counts,
                      planned_tokens)
from .models import report, sparsified, sparsify, unsparsify
from .raters import select_raters
from .recycle import density_peak_clusters, recycle
from .scores import rater_attention, visual_scores
from .report import Report
from .utils import seed_everything
from . import flops  # sparsevlm.flops.paper_table() etc.

__version__ = "0.1.0"

# What a user calls: the entry points, the configs, budget matching, and the steps the course takes
# apart (raters, scores, rank, recycling). Plumbing (index helpers in `select`, the budget's and
# scores' inner steps) stays importable from its own module.
__all__ = [
    "sparsify", "unsparsify", "sparsified", "report", "Report",
    "SparseVLMConfig", "RandomConfig", "FastVConfig", "PDropConfig", "VisionZipConfig", "ToMeConfig", "DARTConfig",
    "DivPruneConfig", "VisPrunerConfig", "CDPrunerConfig", "PoolingConfig", "DyCokeConfig", "FastVIDConfig",
    "VidCom2Config", "HoliTomConfig", "PRESET_SCHEDULES", "PLUS_SCHEDULES",
    "match_budget", "matched_baselines", "planned_counts", "planned_tokens",
    "select_raters", "rater_attention", "visual_scores", "attention_rank", "rank_keep_count", "equivalent_tokens",
    "recycle", "density_peak_clusters",
    "seed_everything", "flops",
]
