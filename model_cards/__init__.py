"""The model card templates; the wheel ships them as the package `hf_kgelu.model_cards`."""
