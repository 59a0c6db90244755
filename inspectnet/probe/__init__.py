"""The one streaming pass: hooks on named layers and the on-disk probe record."""
