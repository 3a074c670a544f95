"""Weight sharing: importance-weighted 1-D k-means per layer, shared-weight fine-tuning, sizes.

Each clustered layer (a Dense or Conv ``kernel``) is stored as a codebook ``c`` (float32[k],
k = 2^bits) plus one integer index per weight; the weight is ``c[index]``. Pruned weights carry the
index ``MASKED`` (-1) and decode to exactly zero, so pruning and sharing compose (Deep Compression,
Han et al. 2016). The codebook minimises the importance-weighted within-cluster error

    J(c, a) = sum_i s_i (w_i - c[a_i])^2,   s_i >= 0,

so a weight with importance 0 is assigned to its nearest centroid but never moves one.

Modules, bottom to top (each imports only modules listed before it):

* ``validation``: bit widths (1..8) and the checks of values and importance;
* ``sorted_values``: values sorted once with compensated prefix sums, and the midpoint boundaries
  that assign values to an ascending codebook (``nearest_indices``);
* ``initialization``: the starting codebooks (``INITS``, ``initial_codebook``);
* ``kmeans``: ``kmeans_1d``, the weighted Lloyd iterations in O(k log n) each;
* ``codebooks``: ``SharedLayer`` per kernel of a params pytree, ``cluster_params``, ``encode``,
  ``decode``, and the codebooks read back after fine-tuning (``extract_codebooks``,
  ``snap_to_codebooks``);
* ``ecq``: ``ecq_cluster`` and ``ecq_cluster_params``, relevance-aware entropy-constrained
  assignment with a fixed zero centroid (ECQx-style), giving the same ``SharedLayer`` s;
* ``transform``: ``shared_gradients``, tied-gradient fine-tuning as an optax transform;
* ``size``: storage in bits with packed or Huffman-coded indices (``size_report``).
"""

from xaijax.weight_sharing.codebooks import (
    MASKED,
    PyTree,
    SharedLayer,
    SharedWeights,
    cluster_params,
    decode,
    encode,
    extract_codebooks,
    kernel_leaves,
    snap_to_codebooks,
)
from xaijax.weight_sharing.ecq import ECQResult, ecq_cluster, ecq_cluster_params
from xaijax.weight_sharing.initialization import INITS, initial_codebook
from xaijax.weight_sharing.kmeans import KMeansResult, kmeans_1d
from xaijax.weight_sharing.size import (
    FLOAT32_BITS,
    LayerSize,
    SizeReport,
    huffman_bits,
    huffman_code_lengths,
    layer_size,
    size_report,
)
from xaijax.weight_sharing.sorted_values import nearest_indices
from xaijax.weight_sharing.transform import SharedGradientsState, shared_gradients
from xaijax.weight_sharing.validation import CODEBOOK_SIZES, MAX_BITS, MIN_BITS

__all__ = [
    "CODEBOOK_SIZES",
    "FLOAT32_BITS",
    "INITS",
    "MASKED",
    "MAX_BITS",
    "MIN_BITS",
    "ECQResult",
    "KMeansResult",
    "LayerSize",
    "PyTree",
    "SharedGradientsState",
    "SharedLayer",
    "SharedWeights",
    "SizeReport",
    "cluster_params",
    "decode",
    "ecq_cluster",
    "ecq_cluster_params",
    "encode",
    "extract_codebooks",
    "huffman_bits",
    "huffman_code_lengths",
    "initial_codebook",
    "kernel_leaves",
    "kmeans_1d",
    "layer_size",
    "nearest_indices",
    "shared_gradients",
    "size_report",
    "snap_to_codebooks",
]
