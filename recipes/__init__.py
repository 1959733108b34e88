"""Single-file training recipes. Installed as `vislora.recipes`, runnable as scripts from a checkout."""
