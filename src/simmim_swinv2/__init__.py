"""SimMIM pretraining and fine-tuning of Swin Transformer V2."""
