"""Pure-PyTorch reference implementations with the official semantics (RECIPE.md)."""
from fastbci.reference.layers import (  # noqa: F401
    day_layer_official, day_projection_ref, n_patches, patch_input_lengths, patchify_ref, softsign,
)
