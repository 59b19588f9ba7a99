"""The built-in base model: tokenizer, synthetic corpus, pretraining and the `base build` command."""
