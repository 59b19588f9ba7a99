"""The built-in base model: tokenizer, synthetic corpus, pretraining, `sf-mlx base build`."""
