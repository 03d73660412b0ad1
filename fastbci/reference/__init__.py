"""Pure-PyTorch reference implementations with the official semantics (docs/recipe.md)."""
from fastbci.reference.augment import augment_ref, smoothing_taps, transform_ref  # noqa: F401
from fastbci.reference.gather import gather_padded_ref  # noqa: F401
from fastbci.reference.layers import (  # noqa: F401
    day_layer_official, day_projection_ref, n_patches, patch_input_lengths, patchify_ref, softsign,
)
from fastbci.reference.smoothing import (  # noqa: F401
    gaussian_taps, same_padding, smooth_output_length, smooth_ref,
)
