"""placeholder, replaced below"""
def family_for_model_type(model_type: str) -> str:
    return {"gemma3_text": "gemma3", "gemma3n_text": "gemma3n", "gemma4_text": "gemma4"}[model_type]
