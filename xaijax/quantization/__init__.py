"""Mixed-precision integer quantization: bit allocation (DeepLIFT, Hessian, uniform) -> AQT or
qwix ops.

* ``numerics``: symmetric per-output-channel integer quantization shared by everything below.
* ``backend``: the backend interface (layer kind -> bits -> op kwargs), the registry
  (``"aqt"`` default, ``"qwix"``, ``"reference"``) and a plain-JAX reference backend;
  ``quantized_layer_kwargs`` feeds ``xaijax.models.get_model(layer_kwargs=...)`` and
  ``quantized_model`` clones a model with them. ``aqt_backend`` and ``qwix_backend`` implement it.
* ``intercept``: ``quantize_any``, the same quantized ops on any linen model (no ``layer_kwargs``),
  by intercepting its Conv / Dense calls by module path.
* ``sensitivity``: per-layer, per-width sensitivities (DeepLIFT multipliers or Hessian traces times
  the quantization error).
* ``allocation``: strategies and the exact multiple-choice knapsack solver.
* ``joint``: one byte budget for pruning levels and bit widths together (choices, storage, the
  exact solve, the uniform baseline, masks); ``joint_damage``: its DeepLIFT and Hessian damage.
* ``qat``: post-training quantization and quantization-aware fine-tuning (``xaijax.training``).
* ``export``: integer weights plus per-channel scales, saved with orbax, and the integer model.
"""

from xaijax.quantization.allocation import (
    STRATEGIES,
    Budget,
    Strategy,
    allocate_bits,
    allocation_bits,
    budget_in_bits,
    get_strategy,
    register_strategy,
    solve_multiple_choice_knapsack,
)
from xaijax.quantization.backend import (
    AQT_BACKEND,
    BACKENDS,
    QWIX_BACKEND,
    REFERENCE_BACKEND,
    SUPPORTED_BITS,
    AqtBackend,
    QuantizationBackend,
    QwixBackend,
    ReferenceBackend,
    aqt_dot_general_config,
    channel_scales,
    check_bits,
    fake_quantize,
    fake_quantize_params,
    get_backend,
    quantize_kernel,
    quantized_layer_kwargs,
    quantized_model,
)
from xaijax.quantization.export import (
    dequantize,
    directory_size,
    export_integer_model,
    integer_kernel,
    load_integer_model,
    model_size_bytes,
    pack_bits,
    save_integer_model,
    unpack_bits,
)
from xaijax.quantization.intercept import InterceptQuantized, quantize_any
from xaijax.quantization.joint import (
    Choice,
    InfeasibleBudgetError,
    LayerGeometry,
    choice_masks,
    cost_table,
    fit_to_budget,
    float_model_bytes,
    improve_within_budget,
    layer_geometry,
    size_bits,
    solve_joint,
    uniform_joint,
)
from xaijax.quantization.joint_damage import (
    deeplift_damage,
    filter_scores,
    hessian_damage,
    hessian_scores,
    magnitude_scores,
)
from xaijax.quantization.qat import post_training_accuracy, quantization_aware_finetune
from xaijax.quantization.sensitivity import (
    deeplift_sensitivity,
    hessian_sensitivity,
    hutchinson_traces,
    layer_importance,
    layer_sizes,
    quantization_errors,
)

__all__ = [
    "AQT_BACKEND",
    "BACKENDS",
    "QWIX_BACKEND",
    "REFERENCE_BACKEND",
    "STRATEGIES",
    "SUPPORTED_BITS",
    "AqtBackend",
    "Budget",
    "Choice",
    "InfeasibleBudgetError",
    "InterceptQuantized",
    "LayerGeometry",
    "QuantizationBackend",
    "QwixBackend",
    "ReferenceBackend",
    "Strategy",
    "allocate_bits",
    "allocation_bits",
    "aqt_dot_general_config",
    "budget_in_bits",
    "channel_scales",
    "check_bits",
    "choice_masks",
    "cost_table",
    "deeplift_damage",
    "deeplift_sensitivity",
    "dequantize",
    "directory_size",
    "export_integer_model",
    "fake_quantize",
    "fake_quantize_params",
    "filter_scores",
    "fit_to_budget",
    "float_model_bytes",
    "get_backend",
    "get_strategy",
    "hessian_damage",
    "hessian_scores",
    "hessian_sensitivity",
    "hutchinson_traces",
    "improve_within_budget",
    "integer_kernel",
    "layer_geometry",
    "layer_importance",
    "layer_sizes",
    "load_integer_model",
    "magnitude_scores",
    "model_size_bytes",
    "pack_bits",
    "post_training_accuracy",
    "quantization_aware_finetune",
    "quantization_errors",
    "quantize_any",
    "quantize_kernel",
    "quantized_layer_kwargs",
    "quantized_model",
    "register_strategy",
    "save_integer_model",
    "size_bits",
    "solve_joint",
    "solve_multiple_choice_knapsack",
    "uniform_joint",
    "unpack_bits",
]
