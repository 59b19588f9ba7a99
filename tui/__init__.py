"""The Textual TUI for sf-mlx: watches run directories another process writes; never imports MLX."""
