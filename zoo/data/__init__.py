"""Data: reading corpora, splitting, tokenizing and packing into training blocks."""

from zoo.data.blocks import BlockBatches, encode_documents, validation_blocks
from zoo.data.inputs import Inputs, read_inputs
from zoo.data.labelled import (DEFAULT_LABELLED, LabelledData, class_names, encode_labels, read_labelled,
                               split_labelled)
from zoo.data.mlm import ClassificationBatches, MLMBatches, class_weights_balanced, mask_tokens, mlm_sequences
from zoo.data.pairs import (DEFAULT_PAIRS, PairBatches, encode_pairs, filter_pairs_by_length, read_pairs, split_pairs,
                            validation_pairs)
from zoo.data.text import DEFAULT_CORPUS, data_checksum, read_documents, split_documents

__all__ = ["BlockBatches", "DEFAULT_CORPUS", "DEFAULT_PAIRS", "PairBatches", "data_checksum", "encode_documents",
           "encode_pairs", "filter_pairs_by_length", "read_documents", "read_pairs", "split_documents", "split_pairs",
           "validation_blocks", "validation_pairs",
           # the texts of `zoo classify/translate/generate --input`
           "Inputs", "read_inputs",
           # BERT: labelled text and masked-LM / classification batches
           "ClassificationBatches", "DEFAULT_LABELLED", "LabelledData", "MLMBatches", "class_names",
           "class_weights_balanced", "encode_labels", "mask_tokens", "mlm_sequences", "read_labelled",
           "split_labelled"]
