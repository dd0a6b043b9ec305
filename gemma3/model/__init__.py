"""Model package. Importing it registers ``video_gemma`` with AutoConfig / AutoModelForCausalLM."""

from gemma3.model import modeling  # noqa: F401  (registration side effect)
