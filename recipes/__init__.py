"""Built-in recipes, installed as the ``brevitas_ldm.recipes`` package data (one TOML file per recipe)."""
