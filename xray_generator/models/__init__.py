"""Network definitions and factories built from config dicts (configs are data)."""
