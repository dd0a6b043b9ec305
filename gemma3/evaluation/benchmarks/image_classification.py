"""Image classification (Oxford-IIIT Pet style label lists): the action-recognition matching on images."""

from __future__ import annotations

from gemma3.evaluation.benchmarks.action_recognition import ActionRecognition, ReleaseActionRecognition
from gemma3.evaluation.benchmarks.base import register_benchmark


@register_benchmark
class ImageClassification(ActionRecognition):
    name = "image_classification"
    tag = "<image>"


@register_benchmark
class OxfordPetsBenchmark(ReleaseActionRecognition):
    """Oxford-IIIT Pet (``oxford_pets:ROOT:test``): the 37 breeds, by generation and by ranking."""

    name = "oxford_pets"
    tag = "<image>"
