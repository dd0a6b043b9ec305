"""lmms-eval's model manifest for ``video_gemma``: the entry point (group ``lmms_eval.models``, declared in
``pyproject.toml``) through which lmms-eval 0.7.x finds the plugin after ``pip install -e .``.

lmms-eval loads this while it is still importing ``lmms_eval.models``, so it imports nothing heavy; the model
class (`gemma3.evaluation.lmms_eval_plugin.VideoGemmaLMMS`) is imported by lmms-eval only when
``--model video_gemma`` is used.
"""

from __future__ import annotations

MODEL_ID = "video_gemma"
CLASS_PATH = "gemma3.evaluation.lmms_eval_plugin.VideoGemmaLMMS"  # lmms-eval's dotted "module.Class" form


def manifests() -> list:
    """The `ModelManifest` lmms-eval registers for ``--model video_gemma`` (a "simple" model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
