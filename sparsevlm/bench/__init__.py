"""Latency and memory of dense vs sparsified prefill and decoding, measured the same way for every
method: `python -m sparsevlm.bench` or `sparsevlm bench` (`make bench`). What it measures and how:
`sparsevlm.bench.command`'s docstring, also its `--help`.

One module per job: `shapes` (7B-shaped configs, random weights), `inputs` (the bench's models and
prompts), `stats` (medians and their intervals), `timing` (prefill, decoding, own work), `layers`
(`--layer-curve`), `profile` (`--profile`) and `command` (`run` and the command line). The files'
folder and the machine they record are `sparsevlm.outputs`'; the configs the bench runs,
`sparsevlm.recipes`'. Every public name of all of these is importable from here too.
"""
from ..outputs import RESULTS, machine, write_results
from ..recipes import methods_for, model_shape, preset_config, rank_config
from .command import add_arguments, main, run
from .inputs import DTYPES, MODELS, VIDEO_FRAMES, model_and_inputs, synthetic_inputs
from .layers import CURVE_TOKENS, layer_curve, predicted_layers_ratio, tokens_per_layer
from .profile import profile_prefill, profile_table
from .shapes import (gemma3_12b_config, internvl3_5_8b_config, llava_1_5_7b_config, llava_next_7b_config,
                     llava_next_video_7b_config, llava_onevision_7b_config, qwen2_5_vl_7b_config, qwen3_5_9b_config,
                     qwen3_vl_8b_config, random_llava, video_llava_7b_config)
from .stats import median_ci, median_spread
from .timing import (clock, decode_steps, features, kv_cache_mb, measure, overhead_times, prefill, prefill_rounds,
                     prefill_time, sync, timed)

__all__ = [
    "run", "main", "add_arguments", "MODELS", "DTYPES", "VIDEO_FRAMES", "model_and_inputs", "synthetic_inputs",
    "CURVE_TOKENS", "layer_curve", "predicted_layers_ratio", "tokens_per_layer", "profile_prefill", "profile_table",
    "RESULTS", "machine", "write_results", "llava_1_5_7b_config", "llava_next_7b_config", "llava_next_video_7b_config",
    "llava_onevision_7b_config", "qwen2_5_vl_7b_config", "qwen3_vl_8b_config", "internvl3_5_8b_config",
    "qwen3_5_9b_config", "gemma3_12b_config",
    "random_llava", "video_llava_7b_config", "median_ci",
    "median_spread", "clock", "decode_steps", "features", "kv_cache_mb", "measure", "overhead_times", "prefill",
    "prefill_rounds", "prefill_time", "sync", "timed", "methods_for", "model_shape", "preset_config", "rank_config",
]
