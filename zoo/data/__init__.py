"""Data: reading corpora, splitting, tokenizing and packing into training blocks."""

from zoo.data.blocks import BlockBatches, encode_documents, validation_blocks
from zoo.data.text import DEFAULT_CORPUS, data_checksum, read_documents, split_documents

__all__ = ["BlockBatches", "DEFAULT_CORPUS", "data_checksum", "encode_documents", "read_documents",
           "split_documents", "validation_blocks"]
