"""Drop-in replacements with the official names and signatures (nejm-brain-to-text,
model_training/), for users who keep the official trainer: swap the imports, keep the rest.

* ``gauss_smooth``, ``transform_data``          (official ``data_augmentations`` / trainer step)
* ``GRUDecoder``                                 (official ``rnn_model.GRUDecoder``)
* ``BrainToTextDataset``, ``train_test_split_indicies``  (official ``dataset``)

See docs/compat.md.
"""
from fastbci.compat.dataset import BrainToTextDataset, train_test_split_indicies  # noqa: F401
from fastbci.compat.model import GRUDecoder  # noqa: F401
from fastbci.compat.transforms import gauss_smooth, transform_data  # noqa: F401

__all__ = ["gauss_smooth", "transform_data", "GRUDecoder", "BrainToTextDataset",
           "train_test_split_indicies"]
