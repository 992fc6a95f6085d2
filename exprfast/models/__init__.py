"""The networks: the Fader model with its presets (``fader``) and the image-level classifiers
and critic used in training and evaluation (``classifiers``)."""
from .classifiers import (AttributeClassifier, AttributeReader, PatchDiscriminator,
                          classifier_loss, critic_loss, least_squares_loss)
from .fader import (DECODER_BLOCKS, DEFAULTS, PRESETS, FaderModel, build, parameter_counts,
                    parameter_table)

__all__ = ["AttributeClassifier", "AttributeReader", "DECODER_BLOCKS", "DEFAULTS", "FaderModel",
           "PRESETS", "PatchDiscriminator", "build", "classifier_loss", "critic_loss",
           "least_squares_loss", "parameter_counts", "parameter_table"]
