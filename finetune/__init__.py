"""finetune: one YAML recipe takes a pretrained checkpoint to a fine-tuned, evaluated model."""

__version__ = "0.1.0"
