"""Translation stage (SDEdit, ILVR, EGSDE, DDIB): ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
