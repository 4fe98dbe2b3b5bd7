"""An example third-party dserve plugin (the tests pip-install it)."""
