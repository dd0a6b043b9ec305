"""Image classification (Oxford-IIIT Pet style label lists): the action-recognition matching on images."""

from __future__ import annotations

from gemma3.evaluation.benchmarks.action_recognition import ActionRecognition
from gemma3.evaluation.benchmarks.base import register_benchmark


@register_benchmark
class ImageClassification(ActionRecognition):
    name = "image_classification"
    tag = "<image>"
