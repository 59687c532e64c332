"""A module in the allowlist that fails to import."""

raise RuntimeError("this module is broken on purpose")
