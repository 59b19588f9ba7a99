"""Pipeline stages, one module each, named with the paper's words."""
