"""The networks: the Fader model with its presets (``fader``), the image-level classifiers
and critic used in training and evaluation (``classifiers``), and the mouth refiner, a second
stage that redraws the decoded mouth sharper (``refiner``)."""
from .classifiers import (AttributeClassifier, AttributeReader, PatchDiscriminator,
                          classifier_loss, critic_loss, least_squares_loss)
from .fader import (DECODER_BLOCKS, DEFAULTS, PRESETS, FaderModel, build, parameter_counts,
                    parameter_table)
from .refiner import (MouthCritic, MouthReader, MouthRefiner, hinge_critic_loss,
                      hinge_generator_loss, refine_box, resize, upsample)

__all__ = ["AttributeClassifier", "AttributeReader", "DECODER_BLOCKS", "DEFAULTS", "FaderModel",
           "MouthCritic", "MouthReader", "MouthRefiner", "PRESETS", "PatchDiscriminator", "build",
           "classifier_loss", "critic_loss", "hinge_critic_loss", "hinge_generator_loss",
           "least_squares_loss", "parameter_counts", "parameter_table", "refine_box", "resize",
           "upsample"]
