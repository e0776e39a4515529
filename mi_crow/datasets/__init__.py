"""Text datasets for activation harvesting and top-text collection.

Every source (in-memory texts, local ``.txt``/``.jsonl``/``.csv`` files, ``save_to_disk``
directories, Hugging Face hub datasets) is exposed as a lazy ``TextDataset`` of ``str`` samples.

Absolute imports keep ``import datasets`` inside this package pointing at the Hugging Face library,
not at this package; the HF library itself is imported only when a source needs it.
"""

from mi_crow.datasets.errors import DatasetError, EmptyDatasetError
from mi_crow.datasets.resolve import as_text_dataset
from mi_crow.datasets.text_dataset import TextDataset

__all__ = ["DatasetError", "EmptyDatasetError", "TextDataset", "as_text_dataset"]
